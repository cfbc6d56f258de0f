"""PartCATSeg text side: prompts of a vocabulary, tokens, and the per-template text features.

For a vocabulary of T object-specific classes ("cat's head", label order) with P generalized parts
and O objects (sorted sets, ``partclipseg.vocabulary.Vocabulary``):

* part-object names = parts + objects (bare: "head", "cat"); specific names = the T original names
  (with ``'s``);
* every name is formatted with each of the ``Tpl`` templates; a name containing ``", "`` is split
  and its pieces' normalised features are averaged per template and renormalised;
* the normalised background embedding is appended as the last row for every template.

``prompt_token_ids(names, templates, context) -> (ids [sum(counts), context], counts [K])``: class-major,
template-minor rows (template-major then split for split names); SOT 49406, EOT 49407, zero padding
(``clip.tokenize``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import VocabularyError
from ...tokenizer import get_tokenizer


def prompts_of(name: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class name: template-major, then the ``", "`` splits of the name."""
    pieces = name.split(", ") if ", " in name else [name]
    return [template.format(piece) for template in templates for piece in pieces]


def prompt_token_ids(names: Sequence[str], templates: Sequence[str],
                     context_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every prompt of ``names`` (see the module docstring) and the rows per name."""
    texts: list[str] = []
    counts: list[int] = []
    for name in names:
        prompts = prompts_of(name, templates)
        texts.extend(prompts)
        counts.append(len(prompts))
    if not texts:
        raise VocabularyError("no class names to encode")
    ids, mask = get_tokenizer()(texts, padding="max_length", max_length=context_length)
    return ids * mask, torch.tensor(counts, dtype=torch.int64)


def per_template_features(encoded: torch.Tensor, counts: torch.Tensor, num_templates: int) -> torch.Tensor:
    """Encoded prompts [sum(counts), E] (any dtype) -> per-class per-template features [K, Tpl, E].

    Each prompt feature is L2-normalised; a class with ``n`` splits has ``Tpl * n`` rows that are
    averaged over the splits per template and renormalised. Arithmetic stays in ``encoded.dtype``
    (the official fp16 path normalises in fp16).
    """
    out = []
    for rows in encoded.split(counts.tolist()):
        rows = rows / rows.norm(dim=-1, keepdim=True)
        if rows.shape[0] != num_templates:
            rows = rows.reshape(num_templates, -1, rows.shape[-1]).mean(dim=1)
            rows = rows / rows.norm(dim=-1, keepdim=True)
        out.append(rows)
    return torch.stack(out, dim=0)


def object_ids_to_model_objects(dataset_objects: Sequence[str], model_objects: Sequence[str],
                                ignore_label: int = 255) -> torch.Tensor:
    """The official ``obj_to_obj_in_part_map``: [ignore_label + 1] int64, dataset object id ->
    index in the vocabulary's (sorted) objects with parts; ``ignore_label`` for objects without parts
    and for ids that are not objects."""
    table = torch.full((ignore_label + 1,), ignore_label, dtype=torch.int64)
    position = {name: i for i, name in enumerate(model_objects)}
    for i, name in enumerate(dataset_objects):
        table[i] = position.get(name, ignore_label)
    return table


def class_ids_to_parts(text_to_part: Sequence[int], ignore_label: int = 255) -> torch.Tensor:
    """The official ``text_to_part_map``: [ignore_label + 1] int64, class id -> generalized-part id,
    ``ignore_label`` elsewhere (so that ignore pixels stay ignore)."""
    table = torch.full((ignore_label + 1,), ignore_label, dtype=torch.int64)
    table[: len(text_to_part)] = torch.tensor(list(text_to_part), dtype=torch.int64)
    return table
