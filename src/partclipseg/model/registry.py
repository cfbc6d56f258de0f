"""The registry of architectures: ``config.architecture`` (the model type) -> model class.

An architecture registers its class with ``@register_architecture("name")``; ``build_model(config)``
builds a randomly initialised model of ``config.architecture``. Nothing outside ``model/`` needs to
know which classes exist.
"""
from __future__ import annotations

from typing import Any, Callable

from ..config import PartCLIPSegConfig
from ..errors import ConfigError

_ARCHITECTURES: dict[str, type] = {}


def register_architecture(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` the model of ``config.architecture == name`` (sets ``cls.model_type``)."""

    def register(cls: type) -> type:
        if name in _ARCHITECTURES and _ARCHITECTURES[name] is not cls:
            raise ValueError(f"architecture {name!r} is already registered ({_ARCHITECTURES[name].__name__})")
        cls.model_type = name
        _ARCHITECTURES[name] = cls
        return cls

    return register


def architectures() -> tuple[str, ...]:
    """The registered architecture names."""
    return tuple(_ARCHITECTURES)


def architecture_class(name: str) -> type:
    """The model class registered for ``name``."""
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; registered: {', '.join(_ARCHITECTURES)}") from None


def build_model(config: PartCLIPSegConfig) -> Any:
    """A randomly initialised model of ``config.architecture`` (``cls(config)`` then ``init_weights()``)."""
    model = architecture_class(config.architecture)(config)
    model.init_weights()
    return model
