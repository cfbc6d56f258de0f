"""The named pretrained models: one table, the single home of every fact about where weights come from.

No real download could be checked while this table was written (no network): the Google Drive file ids
and file names are the ones in the authors' README, the sizes are the approximate sizes it states, and
no exact byte count or sha256 is known yet (``bytes``/``sha256`` stay ``None`` until someone measures a
real download; the server's announced length is checked meanwhile and the hash of what arrived is
recorded and re-checked on every later load).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILTIN_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "default_model"  # the "toy" model
GDRIVE_URL = "https://drive.google.com/uc?id={id}"
GDRIVE_VIEW_URL = "https://drive.google.com/file/d/{id}/view"
HUB_URL = "https://huggingface.co/{repo}"


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    ``source``: ``"gdrive"`` (an official detectron2 ``.pth`` converted once into the cache), ``"hub"``
    (a Hugging Face repository in ``transformers`` CLIPSeg layout) or ``"builtin"`` (shipped in the
    package). ``config_preset``: the config (a preset name or a config JSON file) an official ``.pth``,
    which carries none, is converted with; its architecture is the checkpoint's.
    """

    name: str
    architecture: str
    trained_on: str
    vocabulary: str
    size: str
    source: str
    licence: str
    paper: str = "-"
    gdrive_id: str | None = None
    filename: str | None = None
    hub_repo: str | None = None
    hub_revision: str = "main"
    config_preset: str = "clipseg-rd64-refined"
    bytes: int | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def url(self) -> str:
        if self.source == "gdrive":
            return GDRIVE_URL.format(id=self.gdrive_id)
        if self.source == "hub":
            return HUB_URL.format(repo=self.hub_repo)
        return "(built into the package)"

    @property
    def source_text(self) -> str:
        if self.source == "gdrive":
            return f"Google Drive {self.gdrive_id}"
        if self.source == "hub":
            return f"HF hub {self.hub_repo}"
        return "package"


_OFFICIAL = "authors' release; MIT code, no weight licence stated"

MODELS: dict[str, ModelEntry] = {e.name: e for e in [
    ModelEntry(
        name="pascal_part_116", architecture="partclipseg", trained_on="Pascal-Part-116 (seen)",
        vocabulary="any \"object's part\"; best on Pascal objects", size="~829 MB", source="gdrive",
        licence=_OFFICIAL, paper="Oracle-Obj 50.02 seen / 31.67 unseen mIoU*",
        gdrive_id="1ytZpfutk__67GLwB-4jMClehJlnAzYFS", filename="partclipseg_voc_oracle.pth"),
    ModelEntry(
        name="ade20k_part_234", architecture="partclipseg", trained_on="ADE20K-Part-234 (seen)",
        vocabulary="any \"object's part\"; best on ADE20K objects", size="~829 MB", source="gdrive",
        licence=_OFFICIAL, paper="paper Table 1*",
        gdrive_id="10UTxrlamYq2rq3Uuv1GdOxpLy8f-QXoz", filename="partclipseg_ade_oracle.pth",
        note="the authors' README names this download partclipseg_voc_oracle.pth too; stored as "
             "partclipseg_ade_oracle.pth so the two never collide"),
    ModelEntry(
        name="clipseg_pascal_part_116", architecture="clipseg", trained_on="Pascal-Part-116 (seen)",
        vocabulary="any \"object's part\"", size="~829 MB", source="gdrive", licence=_OFFICIAL,
        paper="paper Table 1 (CLIPSeg row)*",
        gdrive_id="1WkCu3-KA2Oho5xzBXDR_HUmBvvKKYSQM", filename="clipseg_voc_oracle.pth",
        note="the authors' fine-tuned CLIPSeg baseline; its link is commented out in their README"),
    ModelEntry(
        name="partcatseg_pascal_part_116", architecture="partcatseg", trained_on="Pascal-Part-116 (seen)",
        vocabulary="any \"object's part\"; best on Pascal objects", size="not measured", source="gdrive",
        licence=_OFFICIAL, paper="h-mIoU 45.77 Pred-All / 50.41 Oracle-Obj**",
        gdrive_id="1JUJjJQLMKE96H5SLNs4EMm4jiU6fPgRb", filename="partcatseg_voc.pth", config_preset="partcatseg-voc",
        note="PartCATSeg (CVPR 2025); the full-size shape (CLIP ViT-B/16 + DINOv2 ViT-S/14)"),
    ModelEntry(
        name="partcatseg_ade20k_part_234", architecture="partcatseg", trained_on="ADE20K-Part-234 (seen)",
        vocabulary="any \"object's part\"; best on ADE20K objects", size="not measured", source="gdrive",
        licence=_OFFICIAL, paper="PartCATSeg paper**",
        gdrive_id="1MKQEk71o9Xvs4aBY_GLyGa1lWTaW10fv", filename="partcatseg_ade.pth", config_preset="partcatseg-voc",
        note="assumes the Pascal model's shapes (the same official backbone config; not checked against a download)"),
    ModelEntry(
        name="partcatseg_partimagenet", architecture="partcatseg", trained_on="PartImageNet (seen)",
        vocabulary="any \"object's part\"; best on PartImageNet objects", size="not measured", source="gdrive",
        licence=_OFFICIAL, paper="PartCATSeg paper**",
        gdrive_id="1zvV6achGzDS_tAwulaSkFYblMTghMHO6", filename="partcatseg_partimagenet_seg.pth",
        config_preset="partcatseg-voc",
        note="assumes the Pascal model's shapes (the same official backbone config; not checked against a download)"),
    ModelEntry(
        name="clipseg-rd64-refined", architecture="clipseg (HF)", trained_on="PhraseCut (no parts)",
        vocabulary="any text; one mask per prompt", size="~603 MB", source="hub",
        licence="Apache-2.0 (HF model card)", paper="-",
        hub_repo="CIDAS/clipseg-rd64-refined",
        note="plain CLIPSeg (transformers semantics): no learned background; a pixel is background when no "
             "prompt's probability passes 0.5"),
    ModelEntry(
        name="toy", architecture="partclipseg", trained_on="the synthetic toy world", vocabulary="toy_world only",
        size="< 10 MB", source="builtin", licence="MIT (this package)", paper="-",
        note="the default; knows only the toy world, not real photographs"),
]}

DEFAULT_MODEL = "toy"


@dataclass(frozen=True)
class WeightFile:
    """A foreign checkpoint a new model starts training from (not a model: ``partclipseg models`` does not
    list it). ``source``: ``"hub"`` (``hub_repo`` / ``filename`` on the Hugging Face hub, through
    ``huggingface_hub``; ``HF_ENDPOINT`` honoured) or ``"url"`` (a plain HTTPS file, ``file_url``).
    ``key_format`` names the key table that reads it (``model/partcatseg/initial_weights.py``). The
    fetched ``.pth`` is converted once into ``<stem>.safetensors`` (its own key names kept) and deleted.
    """

    name: str
    description: str
    source: str
    filename: str
    key_format: str
    size: str
    licence: str
    hub_repo: str | None = None
    hub_revision: str = "main"
    file_url: str | None = None
    bytes: int | None = None
    sha256: str | None = None

    @property
    def url(self) -> str:
        if self.source == "hub":
            return f"{HUB_URL.format(repo=self.hub_repo)}/resolve/{self.hub_revision}/{self.filename}"
        return str(self.file_url)

    @property
    def source_text(self) -> str:
        return f"HF hub {self.hub_repo}/{self.filename}" if self.source == "hub" else self.url


#: the foreign checkpoints of the official training recipes (sizes: not measured, no download was possible
#: while this table was written; the sha256 of what arrives is recorded and re-checked on every later use)
WEIGHT_FILES: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile(
        name="catseg_base", description="CAT-Seg (B): CLIP ViT-B/16 (image attention fine-tuned) + ResNet-101 "
        "guidance + cost aggregation, trained on COCO-Stuff; PartCATSeg's MODEL.WEIGHTS",
        source="hub", hub_repo="hamacojr/CAT-Seg", filename="model_final_base.pth", key_format="catseg_base",
        size="not measured", licence="CAT-Seg authors' release (KU-CVLAB/CAT-Seg, MIT code); no weight licence "
        "stated"),
    WeightFile(
        name="dinov2_vits14", description="DINOv2 ViT-S/14 (LVD-142M), the torch.hub facebookresearch/dinov2 "
        "'dinov2_vits14' weights", source="url", filename="dinov2_vits14_pretrain.pth", key_format="dinov2_hub",
        file_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        size="not measured", licence="Apache-2.0 (facebookresearch/dinov2)"),
]}


def get_weight_file(name: str) -> WeightFile:
    from ..errors import PartCLIPSegError

    try:
        return WEIGHT_FILES[name]
    except KeyError:
        raise PartCLIPSegError(f"unknown weight file {name!r}; known: {', '.join(WEIGHT_FILES)}") from None


def get_entry(name: str) -> ModelEntry | None:
    return MODELS.get(name)


COLUMNS = (("name", "name"), ("architecture", "architecture"), ("trained_on", "trained on"),
           ("vocabulary", "vocabulary"), ("size", "size"), ("source", "source"), ("licence", "licence"),
           ("paper", "paper"), ("cached", "cached"))


def format_table(rows: list[dict[str, Any]]) -> str:
    """The ``partclipseg models`` table: one aligned row per model, then the notes."""
    cells = [[label for _, label in COLUMNS]]
    for row in rows:
        cells.append([("yes" if row[key] else "no") if key == "cached" else str(row[key]) for key, _ in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(f"{row['name']}: {row['note']}" for row in rows if row["note"])
    lines.append("* the paper's numbers (PartCLIPSeg, NeurIPS 2024) as quoted by a public results index; not checked "
                 "against the PDF nor re-measured here.")
    lines.append("** PartCATSeg (CVPR 2025), Pascal-Part-116 zero-shot harmonic mIoU as its authors report it; not "
                 "re-measured here.")
    lines.append("Use one with --model NAME; fetch ahead of time with `partclipseg download NAME [--to DIR]`.")
    return "\n".join(lines)
