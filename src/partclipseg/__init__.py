"""partclipseg: open-vocabulary part segmentation (PartCLIPSeg, NeurIPS 2024).

The public API is imported lazily, so ``import partclipseg`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PartCLIPSeg": "partclipseg.model", "CLIPSegBaseline": "partclipseg.model", "build_model": "partclipseg.model",
    "PartSegmentationModel": "partclipseg.model", "as_predictor": "partclipseg.predictor",
    "PartCLIPSegConfig": "partclipseg.config", "get_config": "partclipseg.config",
    "Vocabulary": "partclipseg.vocabulary", "get_tokenizer": "partclipseg.tokenizer",
    "CLIPTokenizer": "partclipseg.tokenizer", "preprocess": "partclipseg.preprocess",
    "load_image": "partclipseg.preprocess", "Predictor": "partclipseg.predictor",
    "segment_parts": "partclipseg.predictor", "PartSegmentation": "partclipseg.result",
    "load_pretrained": "partclipseg.weights", "save_pretrained": "partclipseg.weights",
    "init_from_clipseg": "partclipseg.weights", "list_models": "partclipseg.hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'partclipseg' has no attribute {name!r}")
