"""Training: recipes (``recipe``), data (``data``) and the loop with DDP, checkpoints and resume (``loop``)."""
from .loop import train
from .recipe import TrainConfig, load_recipe

__all__ = ["TrainConfig", "load_recipe", "train"]
