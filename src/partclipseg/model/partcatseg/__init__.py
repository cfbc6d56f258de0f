"""PartCATSeg (CVPR 2025) as a second architecture: see ``model.py`` for the stages."""
from .config import PARTCATSEG_CONFIGS, PartCATSegConfig, get_partcatseg_config
from .model import PartCATSeg, PartCATSegImage, PartCATSegText

__all__ = ["PARTCATSEG_CONFIGS", "PartCATSeg", "PartCATSegConfig", "PartCATSegImage", "PartCATSegText",
           "get_partcatseg_config"]
