"""PartCATSeg (CVPR 2025) as a second architecture: see ``model.py`` for the stages."""
from .config import PARTCATSEG_CONFIGS, PartCATSegConfig, get_partcatseg_config
from .initial_weights import CATSEG_BASE_DINOV2_INIT, build_from_catseg_base_and_dinov2
from .model import PartCATSeg, PartCATSegImage, PartCATSegText
from .toy_towers import build_from_towers

__all__ = ["CATSEG_BASE_DINOV2_INIT", "PARTCATSEG_CONFIGS", "PartCATSeg", "PartCATSegConfig", "PartCATSegImage",
           "PartCATSegText", "build_from_catseg_base_and_dinov2", "build_from_towers", "get_partcatseg_config"]
