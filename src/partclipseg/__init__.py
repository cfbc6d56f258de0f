"""partclipseg: open-vocabulary part segmentation (PartCLIPSeg, NeurIPS 2024)."""
from __future__ import annotations

__version__ = "0.1.0"
