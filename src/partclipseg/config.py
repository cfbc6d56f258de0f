"""Model configuration: plain dataclasses, named presets, JSON round-trip.

A saved model is a folder with ``config.json`` (``PartCLIPSegConfig.to_dict()``) beside
``model.safetensors``. Nothing here imports the model code.

Presets (``CONFIGS``):

* ``"clipseg-rd64-refined"`` — the shape of ``CIDAS/clipseg-rd64-refined`` as used by the official
  PartCLIPSeg: CLIP ViT-B/16 (768 x 12) at native size 224, text tower 512 x 12, projection 512,
  decoder reduce 64, extract layers [3, 6, 9], 352 px processing size.
* ``"tiny"`` — the shape of the official golden fixtures (2 ViT layers of width 768, 8-wide text
  tower, 64 px native, 96 px processing): used by tests.
* ``"tiny-fast"`` — a smaller tiny model (ViT width 64) for fast tests.
* ``"toy"`` — the first built-in default model's shape (8 px patches, 96 px input, no pretraining).
* ``"toy2"`` — the built-in default model: 16 px patches at 192 px, towers pretrained contrastively on
  the toy world (``partclipseg pretrain``) before part training; the official object-index bug off.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .io import json_text

#: the architectures a config may name; each has a model class registered under that name
#: (``partclipseg.model.registry``; ``tests/test_structure.py`` checks that both lists agree)
ARCHITECTURES = ("partclipseg", "clipseg", "partcatseg")
#: architectures described by their own config class, not by ``PartCLIPSegConfig``
OWN_CONFIG_CLASS = {"partcatseg": "PartCATSegConfig (partclipseg.model.partcatseg.config)"}
BACKGROUNDS = ("learned", "none")


@dataclass
class VisionConfig:
    """CLIP ViT vision tower. ``image_size`` is the *native* size of the position table."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    layer_norm_eps: float = 1e-5

    @property
    def native_grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    """CLIP text transformer (causal, pooled at the end-of-text token)."""

    hidden_size: int = 512
    num_layers: int = 12
    num_heads: int = 8
    intermediate_size: int = 2048
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5


@dataclass
class DecoderConfig:
    """CLIPSeg decoder. The official code forces ReLU in the decoder MLPs (post-norm layers)."""

    reduce_dim: int = 64
    num_heads: int = 4
    intermediate_size: int = 2048
    extract_layers: tuple[int, ...] = (3, 6, 9)
    conditional_layer: int = 0
    complex_transposed_convolution: bool = True
    layer_norm_eps: float = 1e-5


@dataclass
class OfficialCompat:
    """Switches for behaviours of the official code that change numbers (SPEC §8.1).

    The defaults reproduce the official code, so that the authors' checkpoints give their numbers.

    * ``object_text_index_offset_bug`` — in the object-specific head the official code gathers the
      object half of the text condition as ``E[o(t)]`` from the table [parts, objects, background]
      *without* the ``+ C_part`` offset, so it usually picks a generalized-part embedding. Released
      checkpoints were trained this way. ``False`` gathers the object's own embedding ``E[C_part + o(t)]``.
    """

    object_text_index_offset_bug: bool = True


@dataclass
class PartCLIPSegConfig:
    """Everything needed to build a model.

    ``architecture`` is ``"partclipseg"`` (two heads) or ``"clipseg"`` (the baseline, one head over
    object-specific prompts). ``image_size`` is the processing size (352 for the real model), separate
    from ``vision.image_size`` (the native size whose position table is interpolated).
    """

    architecture: str = "partclipseg"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    projection_dim: int = 512
    image_size: int = 352
    visual_adapter_reduction: int = 4
    visual_adapter_ratio: float = 0.2
    visual_adapter: bool = True
    background: str = "learned"
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    official: OfficialCompat = field(default_factory=OfficialCompat)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}")
        if self.architecture in OWN_CONFIG_CLASS:
            raise ConfigError(f"architecture {self.architecture!r} is configured by {OWN_CONFIG_CLASS[self.architecture]},"
                              f" not by a PartCLIPSeg config")
        check_field_types(self)
        v, t, d = self.vision, self.text, self.decoder
        for where, section in (("vision", v), ("text", t), ("decoder", d), ("", self)):
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                name = f"{where}.{f.name}" if where else f.name
                if f.type == "int" and f.name not in ("conditional_layer",) and value < 1:
                    raise ConfigError(f"config field {name} must be >= 1, got {value!r}")
                if f.type == "float" and not (math.isfinite(value) and value > 0):
                    raise ConfigError(f"config field {name} must be a positive finite number, got {value!r}")
        for name, hidden, heads in (("vision", v.hidden_size, v.num_heads), ("text", t.hidden_size, t.num_heads),
                                    ("decoder", d.reduce_dim, d.num_heads)):
            if hidden % heads:
                raise ConfigError(f"{name}: hidden size {hidden} is not divisible by {heads} heads")
        if v.image_size % v.patch_size:
            raise ConfigError(f"vision.image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        if self.image_size % v.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {v.patch_size}")
        if v.patch_size % 4:
            raise ConfigError(f"patch_size {v.patch_size} must be a multiple of 4 (two x(patch/4) up-convolutions)")
        if not d.extract_layers:
            raise ConfigError("decoder.extract_layers is empty")
        for layer in d.extract_layers:
            if not -1 <= layer < v.num_layers:
                raise ConfigError(f"decoder.extract_layers has {layer}, outside [-1, {v.num_layers - 1}]")
        if not 0 <= d.conditional_layer < len(d.extract_layers):
            raise ConfigError(f"decoder.conditional_layer {d.conditional_layer} is not a decoder layer index")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        if self.architecture == "partclipseg" and (self.background != "learned" or not self.visual_adapter):
            raise ConfigError("a partclipseg model needs background='learned' and visual_adapter=True")
        if self.visual_adapter_reduction <= 0 or v.hidden_size % self.visual_adapter_reduction:
            raise ConfigError(f"visual_adapter_reduction {self.visual_adapter_reduction} does not divide "
                              f"vision.hidden_size {v.hidden_size}")

    @property
    def model_type(self) -> str:
        """The registry key of the model class (``partclipseg.model.registry``): ``architecture``."""
        return self.architecture

    @property
    def grid_size(self) -> int:
        """Token grid side at the processing size (22 for 352 px with 16 px patches)."""
        return self.image_size // self.vision.patch_size

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format"] = "partclipseg"
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PartCLIPSegConfig":
        data = dict(data)
        data.pop("format", None)
        sub = {"vision": VisionConfig, "text": TextConfig, "decoder": DecoderConfig, "official": OfficialCompat}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}")
        for key, value in data.items():
            if key in sub:
                kwargs[key] = _sub_from_dict(sub[key], value, key)
            elif key in ("image_mean", "image_std") and isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(Path(path), json_text(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PartCLIPSegConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} does not hold a JSON object")
        try:
            if data.get("format") == "partclipseg":
                return cls.from_dict(data)
            if "vision_config" in data and "text_config" in data:
                return from_official_config(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        raise ConfigError(f"config file {path} is neither a partclipseg config nor an official/HF CLIPSeg config")


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _type_problem(annotation: str, value: Any) -> str | None:
    """Why ``value`` does not fit a field annotated ``annotation`` (None if it fits)."""
    if annotation in _SCALARS:
        want = _SCALARS[annotation]
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, want)
        return None if ok else f"must be {'an' if annotation == 'int' else 'a'} {annotation}"
    if annotation.startswith("tuple["):
        inner = annotation[6:-1].split(", ")
        if not isinstance(value, (tuple, list)):
            return "must be a list"
        if inner[-1] != "..." and len(value) != len(inner):
            return f"must be a list of {len(inner)} numbers"
        problems = [_type_problem(inner[0], v) for v in value]
        return f"must be a list of {inner[0]}s" if any(problems) else None
    return None


def check_field_types(config: Any, where: str = "") -> None:
    """Refuse wrongly typed fields (``"96"``, ``null``, ``96.5`` for an integer, ...) anywhere in a config."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_field_types(value, f"{name}.")
            continue
        problem = _type_problem(str(f.type), value)
        if problem:
            raise ConfigError(f"config field {name} {problem}, got {value!r}")


def _sub_from_dict(kind: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"config field {where!r} must be an object, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in config section {where!r}")
    value = dict(value)
    for f in dataclasses.fields(kind):
        if f.name in value and str(f.type).startswith("tuple[") and isinstance(value[f.name], list):
            value[f.name] = tuple(value[f.name])
    return kind(**value)


def from_official_config(data: dict[str, Any], *, image_size: int | None = None,
                         architecture: str = "partclipseg") -> PartCLIPSegConfig:
    """Build a config from an official ``PartCLIPSegConfig.to_dict()`` / HF ``CLIPSegConfig`` JSON.

    The official JSON does not store the processing size: it defaults to 352 (the CLIPSeg
    processor) unless ``image_size`` is given.
    """
    try:
        vc, tc = data["vision_config"], data["text_config"]
        for name, section in (("vision_config", vc), ("text_config", tc)):
            if not isinstance(section, dict):
                raise ConfigError(f"malformed official config: {name} must be an object, got {section!r}")
        vision = VisionConfig(
            hidden_size=int(vc.get("hidden_size", 768)), num_layers=int(vc.get("num_hidden_layers", 12)),
            num_heads=int(vc.get("num_attention_heads", 12)), intermediate_size=int(vc.get("intermediate_size", 3072)),
            image_size=int(vc.get("image_size", 224)), patch_size=int(vc.get("patch_size", 32)),
            layer_norm_eps=float(vc.get("layer_norm_eps", 1e-5)))
        text = TextConfig(
            hidden_size=int(tc.get("hidden_size", 512)), num_layers=int(tc.get("num_hidden_layers", 12)),
            num_heads=int(tc.get("num_attention_heads", 8)), intermediate_size=int(tc.get("intermediate_size", 2048)),
            vocab_size=int(tc.get("vocab_size", 49408)),
            max_position_embeddings=int(tc.get("max_position_embeddings", 77)),
            layer_norm_eps=float(tc.get("layer_norm_eps", 1e-5)))
        decoder = DecoderConfig(
            reduce_dim=int(data.get("reduce_dim", 64)), num_heads=int(data.get("decoder_num_attention_heads", 4)),
            intermediate_size=int(data.get("decoder_intermediate_size", 2048)),
            extract_layers=tuple(int(x) for x in data.get("extract_layers", (3, 6, 9))),
            conditional_layer=int(data.get("conditional_layer", 0)),
            complex_transposed_convolution=bool(data.get("use_complex_transposed_convolution", False)),
            layer_norm_eps=vision.layer_norm_eps)  # the decoder copies the vision config (transformers)
        for act_key, act in (("hidden_act", vc.get("hidden_act", "quick_gelu")),
                             ("text hidden_act", tc.get("hidden_act", "quick_gelu"))):
            if act != "quick_gelu":
                raise ConfigError(f"unsupported {act_key} {act!r} (CLIP towers use quick_gelu)")
        return PartCLIPSegConfig(architecture=architecture, vision=vision, text=text, decoder=decoder,
                                 projection_dim=int(data.get("projection_dim", 512)),
                                 image_size=image_size if image_size is not None else 352)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"malformed official config: {exc!r}") from None


def _rd64_refined() -> PartCLIPSegConfig:
    return PartCLIPSegConfig()


def _tiny() -> PartCLIPSegConfig:
    return PartCLIPSegConfig(
        vision=VisionConfig(hidden_size=768, num_layers=2, num_heads=12, intermediate_size=32, image_size=64),
        text=TextConfig(hidden_size=8, num_layers=2, num_heads=2, intermediate_size=32),
        decoder=DecoderConfig(intermediate_size=64, extract_layers=(-1, 0, 1)),
        image_size=96)


def _tiny_fast() -> PartCLIPSegConfig:
    return PartCLIPSegConfig(
        vision=VisionConfig(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128, image_size=64),
        text=TextConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        decoder=DecoderConfig(reduce_dim=32, num_heads=4, intermediate_size=64, extract_layers=(1, 2, 3)),
        projection_dim=64, image_size=96)


def _toy() -> PartCLIPSegConfig:
    """The built-in default model's shape: small enough to train on a CPU and ship (< 10 MB), with
    8 px patches so that 96 px inputs give a 12 x 12 token grid."""
    return PartCLIPSegConfig(
        vision=VisionConfig(hidden_size=96, num_layers=4, num_heads=4, intermediate_size=192, image_size=64,
                            patch_size=8),
        text=TextConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        decoder=DecoderConfig(reduce_dim=32, num_heads=4, intermediate_size=64, extract_layers=(1, 2, 3)),
        projection_dim=64, image_size=96)


def _toy2() -> PartCLIPSegConfig:
    """The built-in default model's shape since the toy world grew up (320-640 px images, language-image
    pretraining): 16 px patches at a 192 px input (a 12 x 12 token grid, the decoder cost of ``toy``
    while every token sees 4x the pixels), a 64-wide text tower for the pretraining captions, and a
    2-head decoder (16-wide heads: the CPU attention kernels run ~2.5x faster than with 8-wide heads).
    The object-specific head reads the object's own text embedding (``object_text_index_offset_bug``
    off): the official index bug would hand it a generalized part's embedding, so the pretrained
    meaning of an unseen object's name would never reach that head."""
    return PartCLIPSegConfig(
        vision=VisionConfig(hidden_size=96, num_layers=4, num_heads=4, intermediate_size=192, image_size=192,
                            patch_size=16),
        text=TextConfig(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128),
        decoder=DecoderConfig(reduce_dim=32, num_heads=2, intermediate_size=64, extract_layers=(1, 2, 3)),
        projection_dim=64, image_size=192, official=OfficialCompat(object_text_index_offset_bug=False))


CONFIGS = {
    "clipseg-rd64-refined": _rd64_refined,
    "tiny": _tiny,
    "tiny-fast": _tiny_fast,
    "toy": _toy,
    "toy2": _toy2,
}


def get_config(name: str, architecture: str = "partclipseg") -> PartCLIPSegConfig:
    """A named preset (``CONFIGS``), for the given architecture."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown config preset {name!r}; known: {sorted(CONFIGS)}")
    config = CONFIGS[name]()
    config.architecture = architecture
    config.validate()
    return config
