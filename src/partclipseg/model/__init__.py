"""``nn.Module``s only: the architecture interface, the registry, CLIP towers, the CLIPSeg decoder and
mask heads, PartCLIPSeg and the CLIPSeg baseline.

Every architecture implements ``PartSegmentationModel`` (``base.py``) and registers itself under
``config.architecture`` (``registry.py``); ``build_model(config)`` builds any of them.
"""
from .base import EncodedVocabulary, ImageFeatures, PartSegmentationModel, SegmentationOutput, TextInputs
from .partclipseg import Adapter, CLIPSegBaseline, CLIPSegCore, PartCLIPSeg
from .registry import architecture_class, architectures, build_model, register_architecture

__all__ = ["Adapter", "CLIPSegBaseline", "CLIPSegCore", "EncodedVocabulary", "ImageFeatures", "PartCLIPSeg",
           "PartSegmentationModel", "SegmentationOutput", "TextInputs", "architecture_class", "architectures",
           "build_model", "register_architecture"]
