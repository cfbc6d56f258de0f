"""The registry of architectures: ``config.architecture`` (the model type) -> model class.

An architecture registers its class with ``@register_architecture("name")``; ``build_model(config)``
builds a randomly initialised model of ``config.architecture``. Nothing outside ``model/`` needs to
know which classes exist.

Named starting points: an architecture registers ``builder(config, progress=True) -> model`` under a
name with ``@register_initial_weights(name, architecture)`` (e.g. PartCATSeg's
``"catseg_base+dinov2_vits14"``: the official recipe's CAT-Seg (B) + DINOv2 ViT-S/14 weights); a
training recipe's ``init=<name>`` is looked up with ``initial_weights_builder(name)``.

Starting from the package's own CLIP towers (the toy pretraining's, ``train.pretrain.export_towers``): an
architecture whose CLIP has another layout registers ``builder(source_config, towers_state) -> (model,
report)`` with ``@register_tower_builder(architecture)`` (PartCATSeg's OpenAI-layout CLIP); architectures
without one share the towers' modules (``vision`` / ``text``) and take them as they are.
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


_INITIAL_WEIGHTS: dict[str, tuple[str, Callable[..., Any]]] = {}


def register_initial_weights(name: str, architecture: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``builder(config, progress=True)`` builds a new ``architecture`` model started from the
    foreign weights that ``name`` stands for."""

    def register(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _INITIAL_WEIGHTS and _INITIAL_WEIGHTS[name][1] is not builder:
            raise ValueError(f"initial weights {name!r} are already registered")
        _INITIAL_WEIGHTS[name] = (architecture, builder)
        return builder

    return register


def initial_weights_builder(name: str) -> tuple[str, Callable[..., Any]] | None:
    """``(architecture, builder)`` registered under ``name``, or ``None``."""
    return _INITIAL_WEIGHTS.get(name)


def initial_weights_names() -> tuple[str, ...]:
    """The registered names of starting points (``init=<name>`` in a recipe)."""
    return tuple(_INITIAL_WEIGHTS)


_TOWER_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_tower_builder(architecture: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``builder(source_config, towers_state) -> (model, report)`` builds a new ``architecture``
    model whose CLIP towers are the package's own towers (``source_config``: their ``PartCLIPSegConfig``;
    ``towers_state``: their state dict, see ``train.pretrain.export_towers``), the rest initialised."""

    def register(builder: Callable[..., Any]) -> Callable[..., Any]:
        if architecture in _TOWER_BUILDERS and _TOWER_BUILDERS[architecture] is not builder:
            raise ValueError(f"a tower builder for {architecture!r} is already registered")
        _TOWER_BUILDERS[architecture] = builder
        return builder

    return register


def tower_builder(architecture: str) -> Callable[..., Any] | None:
    """The builder registered for ``architecture`` by ``register_tower_builder``, or ``None`` (the
    architecture uses the towers' own modules)."""
    return _TOWER_BUILDERS.get(architecture)
