"""PartCATSeg configuration: one dataclass (``PartCATSegConfig``) with named presets.

Presets (``PARTCATSEG_CONFIGS``):

* ``"partcatseg-voc"`` — the official full size (``configs/zero_shot/partcatseg_voc.yaml`` of
  kaist-cvml/part-catseg): CLIP ViT-B/16 (OpenAI layout, embed 512, vision 768 x 12, text 512 x 12),
  DINOv2 ViT-S/14 (384 x 12, 6 heads), aggregator hidden 128, 2 layers, 4 heads, 80 templates.
  The ADE20K-Part-234 and PartImageNet checkpoints have the same shapes.
* ``"partcatseg-tiny"`` — the shape of the official golden fixtures (``tiny/`` of the reference
  folder): CLIP embed 32 (128 x 2), DINOv2 32 x 2, hidden 32.
* ``"partcatseg-toy"`` — trains on the toy world in CPU minutes (``toy_world_partcatseg`` recipe):
  128 px CLIP input, 8 x 8 cost grid, 4 templates.

Sizes that the official code hard-codes (CLIP input 384, DINOv2 input 448 = 32 x 32 patches, the
guidance maps 96 / 48 / 24, the 24 x 24 cost grid) are fields here so that they have one home.

Loading is strict: unknown fields raise ``ConfigError``. ``from_reference_fixture`` reads the
``config.json`` of an official fixture folder (detectron2 cfg + ``clip_arch`` + ``dino_arch``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import read_config_file, strict_from_dict
from ...errors import ConfigError

from .templates import IMAGENET_TEMPLATES

MODEL_TYPE = "partcatseg"


@dataclass
class CLIPTowersConfig:
    """OpenAI CLIP (``model_vpt.CLIP``): ViT image tower and causal text tower.

    Heads are ``vision_width // 64`` and ``text_width // 64`` in OpenAI's ``build_model``. The MLP hidden
    widths are OpenAI's ``4 x width`` unless ``vision_mlp_width`` / ``text_mlp_width`` are set (towers of
    another shape, e.g. the toy pretraining's 2 x width, ``toy_towers.py``).
    """

    embed_dim: int = 512
    image_resolution: int = 224
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_patch_size: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    vision_mlp_width: int | None = None
    text_mlp_width: int | None = None

    @property
    def native_grid(self) -> int:
        return self.image_resolution // self.vision_patch_size

    @property
    def vision_mlp_hidden(self) -> int:
        """The image blocks' MLP hidden width (``vision_mlp_width``, default 4 x ``vision_width``)."""
        return 4 * self.vision_width if self.vision_mlp_width is None else self.vision_mlp_width

    @property
    def text_mlp_hidden(self) -> int:
        """The text blocks' MLP hidden width (``text_mlp_width``, default 4 x ``text_width``)."""
        return 4 * self.text_width if self.text_mlp_width is None else self.text_mlp_width


@dataclass
class DinoV2Config:
    """DINOv2 ViT (``DinoVisionTransformer``); ``img_size`` sets the position-table grid."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 518
    layer_scale_init: float = 1.0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    layer_norm_eps: float = 1e-6

    @property
    def native_grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass
class AggregatorConfig:
    """CAT-Seg / PartCATSeg cost aggregation and decoder (``MODEL.SEM_SEG_HEAD``).

    ``class_attention`` is ``"query"`` because the official ``Aggregator`` hard-codes
    ``attention_type="query"`` for every layer (the YAML's ``ATTENTION_TYPE: linear`` is ignored);
    ``"linear"`` gives CAT-Seg's linear attention instead.
    """

    text_guidance_proj_dim: int = 128
    appearance_guidance_proj_dim: int = 128
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    num_layers: int = 2
    num_heads: int = 4
    hidden_dim: int = 128
    pooling_size: tuple[int, int] = (2, 2)
    window_size: int = 12
    feature_resolution: tuple[int, int] = (24, 24)
    num_templates: int = 80
    class_attention: str = "query"


@dataclass
class PartCATSegOfficialCompat:
    """Behaviours of the official code that change numbers; the defaults reproduce it.

    * ``text_features_fp16`` — the official predictor encodes the prompts with the fp16 CLIP
      (``clip.load`` -> ``convert_weights``) before casting the model to fp32, so the text features
      (and their per-template L2 normalisation) are fp16. ``False`` encodes in float32.
    * ``oracle_substring_match`` — Oracle-Obj keeps every class whose name contains the object's
      name as a substring (``"car"`` also keeps ``"cart's wheel"``). ``False`` matches the object part
      of the name (before ``'s``) exactly.
    * ``crop_logits_by_pixels`` — detectron2's ``sem_seg_postprocess`` crops the [4g, 4g] logit maps
      of the padded batch by the image's *pixel* size, a no-op for images larger than the map, so the
      padding is stretched into the output. ``False`` crops the image's share of the padded frame.
    """

    text_features_fp16: bool = True
    oracle_substring_match: bool = True
    crop_logits_by_pixels: bool = True


@dataclass
class PartCATSegConfig:
    """Everything needed to build a PartCATSeg model (``model_type = "partcatseg"``). The training loss's
    weights are the recipe's (``TrainConfig.loss``), not the model's."""

    clip: CLIPTowersConfig = field(default_factory=CLIPTowersConfig)
    dino: DinoV2Config = field(default_factory=DinoV2Config)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    clip_resolution: int = 384
    dino_resolution: int = 448
    guidance_sizes: tuple[int, int, int] = (96, 48, 24)
    size_divisibility: int = 32
    clip_pixel_mean: tuple[float, float, float] = (122.7709383, 116.7460125, 104.09373615)
    clip_pixel_std: tuple[float, float, float] = (68.5005327, 66.6321579, 70.3231630)
    dino_pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    dino_pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    official: PartCATSegOfficialCompat = field(default_factory=PartCATSegOfficialCompat)
    #: the prompt templates (``None``: the 80 ImageNet templates, ``templates.py``); their number must
    #: equal ``aggregator.num_templates``
    templates: tuple[str, ...] | None = None
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        c, d, a = self.clip, self.dino, self.aggregator
        if self.model_type != MODEL_TYPE:
            raise ConfigError(f"model_type must be {MODEL_TYPE!r}, got {self.model_type!r}")
        for name, width, heads in (("clip vision", c.vision_width, c.vision_heads),
                                   ("clip text", c.text_width, c.text_heads),
                                   ("dino", d.embed_dim, d.num_heads),
                                   ("aggregator", a.hidden_dim, a.num_heads)):
            if heads <= 0 or width % heads:
                raise ConfigError(f"{name}: width {width} is not divisible by {heads} heads")
        for name, hidden in (("clip.vision_mlp_width", c.vision_mlp_width), ("clip.text_mlp_width", c.text_mlp_width)):
            if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0):
                raise ConfigError(f"{name} must be a positive integer or null (4 x width), got {hidden!r}")
        if self.clip_resolution % c.vision_patch_size:
            raise ConfigError(f"clip_resolution {self.clip_resolution} is not a multiple of the patch "
                              f"size {c.vision_patch_size}")
        if self.clip_resolution // c.vision_patch_size != a.feature_resolution[0] or \
                a.feature_resolution[0] != a.feature_resolution[1]:
            raise ConfigError(f"aggregator.feature_resolution {a.feature_resolution} must be the square CLIP "
                              f"token grid {self.clip_resolution // c.vision_patch_size}")
        if self.dino_resolution % d.patch_size:
            raise ConfigError(f"dino_resolution {self.dino_resolution} is not a multiple of {d.patch_size}")
        g = a.feature_resolution[0]
        if tuple(self.guidance_sizes) != (4 * g, 2 * g, g):
            raise ConfigError(f"guidance_sizes {self.guidance_sizes} must be (4, 2, 1) x the cost grid {g}")
        if len(a.decoder_dims) != 2 or len(a.decoder_guidance_proj_dims) != 2:
            raise ConfigError("aggregator.decoder_dims and decoder_guidance_proj_dims need two entries")
        for dim in a.decoder_dims:
            if dim < 16 or dim % (dim // 16):
                raise ConfigError(f"decoder width {dim} does not split into GroupNorm(dim // 16) groups")
        if a.hidden_dim <= a.decoder_guidance_proj_dims[0] or a.decoder_dims[0] <= a.decoder_guidance_proj_dims[1]:
            raise ConfigError("decoder guidance projections must be narrower than the decoder inputs")
        if a.class_attention not in ("query", "linear"):
            raise ConfigError(f"aggregator.class_attention must be 'query' or 'linear', got {a.class_attention!r}")
        if self.templates is not None and len(self.templates) != a.num_templates:
            raise ConfigError(f"{len(self.templates)} templates for aggregator.num_templates = {a.num_templates}")
        if g % a.pooling_size[0] or g % a.pooling_size[1]:
            raise ConfigError(f"pooling_size {a.pooling_size} does not divide the cost grid {g}")
        window = min(a.window_size, g)
        if g % window:
            raise ConfigError(f"window_size {a.window_size} does not divide the cost grid {g}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def architecture(self) -> str:
        """The registry key of the model class (``partclipseg.model.registry``)."""
        return self.model_type

    @property
    def cost_grid(self) -> int:
        """Side of the cost volume (24): CLIP tokens per side at ``clip_resolution``."""
        return self.aggregator.feature_resolution[0]

    @property
    def dino_grid(self) -> int:
        """DINOv2 tokens per side at ``dino_resolution`` (32)."""
        return self.dino_resolution // self.dino.patch_size

    @property
    def logit_size(self) -> int:
        """Side of the decoder's logit maps (96 = 4 x the cost grid)."""
        return 4 * self.cost_grid

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format"] = "partclipseg"  # a saved folder of this package (``checkpoint.inspect_checkpoint``)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PartCATSegConfig":
        """Strict (``partclipseg.config.strict_from_dict``: unknown fields and malformed sections raise)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a PartCATSeg config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        data.pop("format", None)
        sections = {"clip": CLIPTowersConfig, "dino": DinoV2Config, "aggregator": AggregatorConfig,
                    "official": PartCATSegOfficialCompat}
        return strict_from_dict(cls, data, sections, label="PartCATSeg ")

    def save(self, path: str | Path) -> None:
        from ...io import atomic_write_text, json_text

        atomic_write_text(Path(path), json_text(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PartCATSegConfig":
        data = read_config_file(Path(path))
        if isinstance(data, dict) and "cfg" in data and "clip_arch" in data:
            return from_reference_fixture(data)
        return cls.from_dict(data)


def from_reference_fixture(data: dict[str, Any]) -> PartCATSegConfig:
    """Config from an official fixture ``config.json`` (detectron2 ``cfg``, ``clip_arch``, ``dino_arch``).

    Checks the facts the official code derives from other fields (text guidance = CLIP embed,
    appearance / decoder guidance = DINOv2 embed, heads = width // 64) instead of trusting them.
    """
    try:
        head = data["cfg"]["MODEL"]["SEM_SEG_HEAD"]
        model = data["cfg"]["MODEL"]
        ca, da = data["clip_arch"], data["dino_arch"]
        sizes = data.get("sizes", {})
        clip = CLIPTowersConfig(
            embed_dim=int(ca["embed_dim"]), image_resolution=int(ca["image_resolution"]),
            vision_width=int(ca["vision_width"]), vision_layers=int(ca["vision_layers"]),
            vision_heads=int(ca.get("vision_heads", int(ca["vision_width"]) // 64)),
            vision_patch_size=int(ca["vision_patch_size"]), context_length=int(ca["context_length"]),
            vocab_size=int(ca["vocab_size"]), text_width=int(ca["transformer_width"]),
            text_layers=int(ca["transformer_layers"]), text_heads=int(ca["transformer_heads"]))
        if da.get("num_register_tokens", 0) or da.get("ffn_layer", "mlp") != "mlp":
            raise ConfigError("only DINOv2 without registers and with an MLP FFN is supported")
        dino = DinoV2Config(
            embed_dim=int(da["embed_dim"]), depth=int(da["depth"]), num_heads=int(da["num_heads"]),
            mlp_ratio=float(da["mlp_ratio"]), patch_size=int(da["patch_size"]), img_size=int(da["img_size"]),
            layer_scale_init=float(da["init_values"]), interpolate_offset=float(da["interpolate_offset"]),
            interpolate_antialias=bool(da["interpolate_antialias"]))
        if int(head["TEXT_GUIDANCE_DIM"]) != clip.embed_dim:
            raise ConfigError("TEXT_GUIDANCE_DIM must equal the CLIP embed dim")
        if int(head["APPEARANCE_GUIDANCE_DIM"]) != dino.embed_dim or \
                [int(x) for x in head["DECODER_GUIDANCE_DIMS"]] != [dino.embed_dim] * 2:
            raise ConfigError("APPEARANCE_GUIDANCE_DIM / DECODER_GUIDANCE_DIMS must equal the DINOv2 embed dim")
        if not head.get("BG_ON", True):
            raise ConfigError("BG_ON: False is not supported (every official config sets it)")
        aggregator = AggregatorConfig(
            text_guidance_proj_dim=int(head["TEXT_GUIDANCE_PROJ_DIM"]),
            appearance_guidance_proj_dim=int(head["APPEARANCE_GUIDANCE_PROJ_DIM"]),
            decoder_dims=tuple(int(x) for x in head["DECODER_DIMS"]),
            decoder_guidance_proj_dims=tuple(int(x) for x in head["DECODER_GUIDANCE_PROJ_DIMS"]),
            num_layers=int(head["NUM_LAYERS"]), num_heads=int(head["NUM_HEADS"]), hidden_dim=int(head["HIDDEN_DIMS"]),
            pooling_size=tuple(int(x) for x in head["POOLING_SIZES"]), window_size=int(head["WINDOW_SIZES"]),
            feature_resolution=tuple(int(x) for x in head["FEATURE_RESOLUTION"]),
            num_templates=int(data["templates"]["count"]) if "templates" in data else 80)
        kwargs: dict[str, Any] = {}
        if "clip_resolution" in sizes:
            kwargs["clip_resolution"] = int(sizes["clip_resolution"][0])
        if "dino_resolution" in sizes:
            kwargs["dino_resolution"] = int(sizes["dino_resolution"][0])
        if "dino_feature_sizes" in sizes:
            fs = sizes["dino_feature_sizes"]
            kwargs["guidance_sizes"] = (int(fs["res2"]), int(fs["res3"]), int(fs["res4"]))
        kwargs["size_divisibility"] = int(model.get("MASK_FORMER", {}).get("SIZE_DIVISIBILITY", 32))
        kwargs["clip_pixel_mean"] = tuple(float(x) for x in model["CLIP_PIXEL_MEAN"])
        kwargs["clip_pixel_std"] = tuple(float(x) for x in model["CLIP_PIXEL_STD"])
        kwargs["dino_pixel_mean"] = tuple(float(x) for x in model["PIXEL_MEAN"])
        kwargs["dino_pixel_std"] = tuple(float(x) for x in model["PIXEL_STD"])
        # data["lambdas"] (the official hard-coded loss weights) belong to training: the recipe's loss section
        if "templates" in data and tuple(data["templates"]["list"]) != IMAGENET_TEMPLATES:
            kwargs["templates"] = tuple(data["templates"]["list"])
        return PartCATSegConfig(clip=clip, dino=dino, aggregator=aggregator, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed PartCATSeg fixture config: {exc!r}") from None


def _voc() -> PartCATSegConfig:
    return PartCATSegConfig()


def _tiny() -> PartCATSegConfig:
    return PartCATSegConfig(
        clip=CLIPTowersConfig(embed_dim=32, vision_width=128, vision_layers=2, vision_heads=2,
                              text_width=128, text_layers=2, text_heads=2),
        dino=DinoV2Config(embed_dim=32, depth=2, num_heads=2),
        aggregator=AggregatorConfig(text_guidance_proj_dim=16, appearance_guidance_proj_dim=16, decoder_dims=(32, 16),
                                    decoder_guidance_proj_dims=(8, 4), num_heads=2, hidden_dim=32))


#: the toy preset's prompt templates (the toy pretraining captions' phrasing, ``train/pretrain.py``)
TOY_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a rendering of a {}.", "there is a {} in the picture.")


def _toy() -> PartCATSegConfig:
    """CPU-minutes size for the toy world (not an official shape): CLIP 128 px input, 16 px patches (an
    8 x 8 cost grid, 32 x 32 logits), 64-wide 2-layer towers, DINOv2 32 x 2 at 112 px (8 x 8 patches),
    aggregator hidden 32 (8 x 8 windows), 4 prompt templates, float32 text features."""
    return PartCATSegConfig(
        clip=CLIPTowersConfig(embed_dim=32, image_resolution=128, vision_width=64, vision_layers=2, vision_heads=2,
                              text_width=64, text_layers=2, text_heads=2),
        dino=DinoV2Config(embed_dim=32, depth=2, num_heads=2, img_size=112),
        aggregator=AggregatorConfig(text_guidance_proj_dim=16, appearance_guidance_proj_dim=16, decoder_dims=(32, 16),
                                    decoder_guidance_proj_dims=(8, 4), num_heads=2, hidden_dim=32, window_size=8,
                                    feature_resolution=(8, 8), num_templates=len(TOY_TEMPLATES)),
        clip_resolution=128, dino_resolution=112, guidance_sizes=(32, 16, 8), templates=TOY_TEMPLATES,
        official=PartCATSegOfficialCompat(text_features_fp16=False))


PARTCATSEG_CONFIGS = {
    "partcatseg-voc": _voc,
    "partcatseg-tiny": _tiny,
    "partcatseg-toy": _toy,
}


def get_partcatseg_config(name: str) -> PartCATSegConfig:
    """A named preset (``PARTCATSEG_CONFIGS``)."""
    if name not in PARTCATSEG_CONFIGS:
        raise ConfigError(f"unknown PartCATSeg config preset {name!r}; known: {sorted(PARTCATSEG_CONFIGS)}")
    return PARTCATSEG_CONFIGS[name]()
