"""``nn.Module``s only: CLIP towers, CLIPSeg decoder, mask heads, PartCLIPSeg and the CLIPSeg baseline."""
from .partclipseg import (Adapter, CLIPSegBaseline, CLIPSegCore, ImageFeatures, PartCLIPSeg, SegmentationOutput,
                          build_model)

__all__ = ["Adapter", "CLIPSegBaseline", "CLIPSegCore", "ImageFeatures", "PartCLIPSeg", "SegmentationOutput",
           "build_model"]
