"""Training losses: official reference values, official switches, batch semantics, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from partclipseg.losses import (LossConfig, attention_losses, build_targets, clipseg_loss, merge_attentions,
                                partclipseg_loss, resize_labels, segmentation_losses)
from partclipseg.model import SegmentationOutput
from partclipseg.vocabulary import Vocabulary

BCE_NAMES = ("object_specific_parts", "generalized_parts", "object_specific_background", "objects")


# ----------------------------------------------------------------------------- reference (official fixture)
def _ref_setup(ref_tensors, ref_vocab):
    train = ref_tensors["train"]
    n = len([k for k in train if k.startswith("obj_part_sem_seg")])
    parts = [train[f"obj_part_sem_seg{i}"].long() for i in range(n)]
    objs = [train[f"sem_seg{i}"].long() for i in range(n)]
    settings = ref_vocab["train_settings"]
    targets = build_targets(parts, objs, ref_vocab["text_to_part"], ref_vocab["text_to_obj_in_part"],
                            ref_vocab["obj_to_obj_in_part"], train["logits"].shape[-1], settings["ignore_label"])
    config = LossConfig(obj_lambda=settings["obj_lambda"], part_lambda=settings["part_lambda"],
                        sep_lambda=settings["attn_sep_lambda"], enh_lambda=settings["attn_enh_lambda"],
                        attn_threshold=settings["attn_mask_threshold"], attn_levels=tuple(settings["attn_level"]),
                        background_weight=settings["class_weight_bg"], per_image=False)  # fixture: B images at once
    return train, parts, targets, config


def _ref_attentions(ref_model, train):
    with torch.no_grad():
        out = ref_model(train["model_input.pixel_values"], train["model_input.input_ids"],
                        train["model_input.part_index_map"], train["model_input.obj_index_map"],
                        train["model_input.attention_mask"], output_attentions=True)
    return out


@pytest.mark.reference
def test_reference_targets_and_bce_terms(ref_tensors, ref_vocab):
    train, parts, targets, config = _ref_setup(ref_tensors, ref_vocab)
    size = train["logits"].shape[-1]
    for raw, resized in zip(parts, targets.tgt):  # same pixels as the official float interpolate
        official = F.interpolate(raw[None, None].float(), size=(size, size), mode="nearest").long()[0, 0]
        assert torch.equal(torch.where(official == ref_vocab["train_settings"]["ignore_label"],
                                       targets.ignore_index, official), resized)
    calls = ref_vocab["train_losses"]["noattn"]["bce_calls_in_order"]
    assert int(targets.part_mask.sum()) == calls[0]["input_shape"][0] == calls[1]["input_shape"][0]
    assert int((~targets.obj_mask).sum()) == calls[2]["input_shape"][0]
    assert list(calls[3]["input_shape"]) == [*targets.tgt.shape, targets.num_objects + 1]
    got = segmentation_losses(train["logits"], train["part_obj_logits"], targets, config)
    # official call order: object-specific parts, generalized parts, object-specific background, objects
    for name, call in zip(BCE_NAMES, calls):
        assert abs(float(got[name]) - call["value"]) < 1e-5, (name, float(got[name]), call["value"])
    assert abs(float(got["total"]) - ref_vocab["train_losses"]["noattn"]["loss_dict"]["loss_sem_seg"]) < 1e-5


@pytest.mark.reference
def test_reference_attention_losses_and_totals(ref_tensors, ref_vocab, ref_model):
    train, _, targets, config = _ref_setup(ref_tensors, ref_vocab)
    out = _ref_attentions(ref_model, train)
    merged = merge_attentions(out.decoder_attentions, ref_vocab["text_to_part"], ref_vocab["text_to_obj_in_part"],
                              config.attn_levels)
    expected = train["attn.agg_attentions"]
    assert merged.shape == expected.shape
    assert float((merged - expected).abs().max()) <= 1e-5
    ref = ref_vocab["train_losses"]
    att = attention_losses(out.decoder_attentions, targets, ref_vocab["text_to_part"],
                           ref_vocab["text_to_obj_in_part"], config)
    assert abs(float(att["loss_sep"]) - ref["attn"]["loss_sep"]) < 1e-5
    assert abs(float(att["loss_enh"]) - ref["attn"]["loss_enh"]) < 1e-5
    # totals from the fixture's model outputs + our attentions
    fixture_out = SegmentationOutput(train["logits"], train["part_obj_logits"], out.class_embeddings,
                                     out.decoder_attentions)
    for key, use in (("attn", True), ("noattn", False)):
        cfg = LossConfig(**{**config.__dict__, "use_attention": use})
        got = partclipseg_loss(fixture_out, targets, cfg)
        assert abs(float(got["total"]) - ref[key]["loss_dict"]["loss_sem_seg"]) < 1e-5, key
        for name, call in zip(BCE_NAMES, ref[key]["bce_calls_in_order"]):
            assert abs(float(got[name]) - call["value"]) < 1e-5


# ----------------------------------------------------------------------------- synthetic data
NAMES = ["cat's tail", "cat's head", "cat's leg", "dog's head", "dog's leg", "dog's ear"]
OBJECTS = ["bird", "cat", "chair", "dog"]  # bird and chair have no parts
VOCAB = Vocabulary.from_names(NAMES)
LUT = VOCAB.object_label_map(OBJECTS)  # -1 = no parts
T, P, O = len(VOCAB), VOCAB.num_parts, VOCAB.num_objects
N = P + O + 1


def _labels(gen, h, w, block=8, ignore=-1, full_cover=False, part_block=1):
    """Blocky object map (dataset ids / ignore) and part map consistent with it (``part_block`` noise)."""
    choices = torch.tensor([1, 3] if full_cover else [ignore, 0, 1, 2, 3, 1, 3])
    grid = choices[torch.randint(len(choices), ((h + block - 1) // block, (w + block - 1) // block), generator=gen)]
    obj = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w].clone()
    part = torch.full((h, w), ignore, dtype=torch.long)
    for label, name in ((1, "cat"), (3, "dog")):
        classes = torch.tensor(VOCAB.classes_of_object(name) + [ignore])
        pick = classes[torch.randint(len(classes), (-(-h // part_block), -(-w // part_block)), generator=gen)]
        pick = pick.repeat_interleave(part_block, 0).repeat_interleave(part_block, 1)[:h, :w]
        part = torch.where(obj == label, pick, part)
    return part, obj


def _targets(parts, objs, size, ignore=-1, lut=LUT):
    return build_targets(parts, objs, VOCAB.text_to_part, VOCAB.text_to_object, lut, size, ignore)


def _batch(seed, sizes=((40, 48), (36, 30)), s=32, full_cover=(), requires_grad=False, part_block=1):
    gen = torch.Generator().manual_seed(seed)
    labels = [_labels(gen, h, w, full_cover=i in full_cover, part_block=part_block) for i, (h, w) in enumerate(sizes)]
    targets = _targets([p for p, _ in labels], [o for _, o in labels], s)
    logits = torch.randn(len(sizes), N, s, s, generator=gen).requires_grad_(requires_grad)
    op_logits = torch.randn(len(sizes), T + 1, s, s, generator=gen).requires_grad_(requires_grad)
    return targets, logits, op_logits


def _attentions(b, r=4, layers=3, heads=2, seed=0, bump=0.0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(b, N, heads, r * r + 1, r * r + 1, generator=gen)
    scores[..., 1:5] += bump  # every query of every class attends to the same few keys
    scores = [scores * (1 + 0.1 * i) for i in range(layers)]
    if requires_grad:
        scores = [x.requires_grad_(True) for x in scores]
    return tuple(x.softmax(-1) for x in scores), scores


def _naive_segmentation(logits, op_logits, tg, cfg):
    """Direct transcription of SPEC §3.3 with explicit one-hot targets and boolean indexing."""
    y_gen, y_os = tg.generalized_onehot().permute(0, 2, 3, 1), tg.object_specific_onehot().permute(0, 2, 3, 1)
    lg, ol = logits.permute(0, 2, 3, 1), op_logits.permute(0, 2, 3, 1)
    w_os, w_gen = torch.ones(T + 1), torch.ones(N)
    w_os[-1] = w_gen[-1] = cfg.background_weight
    groups = [[i] for i in range(len(logits))] if cfg.per_image else [list(range(len(logits)))]
    totals = []
    for g in groups:
        pm, om = tg.part_mask[g], tg.obj_mask[g]
        os_loss, part_loss = 0.0, 0.0
        if pm.sum() > 0:
            os_loss = F.binary_cross_entropy_with_logits(ol[g][pm], y_os[g][pm], weight=w_os)
            part_loss = F.binary_cross_entropy_with_logits(lg[g][..., :P][pm], y_gen[g][..., :P][pm])
        if om.sum() > 0:
            os_loss = os_loss + F.binary_cross_entropy_with_logits(ol[g][~om], y_os[g][~om], weight=w_os)
        obj_loss = F.binary_cross_entropy_with_logits(lg[g][..., P:], y_gen[g][..., P:], weight=w_gen[P:])
        totals.append(os_loss + cfg.obj_lambda * obj_loss + cfg.part_lambda * part_loss)
    return torch.stack(totals).mean()


def _naive_attention(atts, tg, cfg):
    """Loop transcription of SPEC §3.4 (per group: image or batch)."""
    agg = merge_attentions(atts, VOCAB.text_to_part, VOCAB.text_to_object, cfg.attn_levels)
    b, r = agg.shape[0], math.isqrt(agg.shape[-1] - 1)
    m = F.interpolate(tg.object_specific_onehot(), size=(r, r), mode="nearest")
    om = F.interpolate(tg.generalized_onehot()[:, P:-1], size=(r, r), mode="nearest")
    g1 = torch.exp(-((torch.arange(3.0) - 1) / 1.0) ** 2)
    kernel = (g1[:, None] * g1[None]) / (g1[:, None] * g1[None]).sum()
    smooth = lambda x: F.conv2d(F.pad(x[None, None], (1, 1, 1, 1), mode="reflect"), kernel[None, None])[0, 0]  # noqa
    a, ign = agg[..., 1:, 1:], tg.ignore_index
    groups = [[i] for i in range(b)] if cfg.per_image else [list(range(b))]
    seps, enhs = [], []
    for group in groups:
        sep, enh, n_obj = 0.0, 0.0, 0
        for i in group:
            values = set(tg.objm_tgt[i].flatten().tolist())
            objs = sorted(values - {ign})
            if cfg.official_unique_drop_last and ign not in values:
                objs = objs[:-1]
            parts = sorted(set(tg.tgt[i].flatten().tolist()) - {ign})
            for o in objs:
                if not parts:
                    continue
                n_obj += 1
                cover, mmax = torch.zeros(r, r), 1.0
                for t in parts:
                    avg = (a[i, t] * m[i, t].reshape(-1, 1)).mean(0).reshape(r, r)
                    norm = (avg - avg.min()) / (avg.max() - avg.min() + 1e-9)
                    mmax = min(mmax, smooth(avg).max())
                    inside = om[i, o] == 1
                    hit = torch.zeros(r, r)
                    hit[inside] = (smooth(norm)[inside] > cfg.attn_threshold).float()
                    cover += hit
                sep += (cover > 1).sum() / ((cover >= 1).sum() + 1e-9)
                enh += 1 - mmax
        n_obj = max(n_obj, 1)
        seps.append(torch.as_tensor(sep) / (n_obj * len(group)))
        enhs.append(torch.as_tensor(enh) / (n_obj * len(group)))
    return torch.stack(seps).mean(), torch.stack(enhs).mean()


# ----------------------------------------------------------------------------- non-reference tests
def test_kernel_matches_spec():
    from partclipseg.losses import _gaussian_kernel
    expected = torch.tensor([[0.0449, 0.1221, 0.0449], [0.1221, 0.3319, 0.1221], [0.0449, 0.1221, 0.0449]])
    torch.testing.assert_close(_gaussian_kernel(torch.zeros(1))[0, 0], expected, atol=1e-4, rtol=0)


def test_resize_labels_matches_float_nearest():
    x = torch.randint(0, 65536, (37, 53))
    for size in ((96, 96), (7, 13), (37, 53)):
        official = F.interpolate(x[None, None].float(), size=size, mode="nearest").long()[0, 0]
        assert torch.equal(resize_labels(x, size), official)


def test_build_targets_semantics_and_ignore_values():
    gen = torch.Generator().manual_seed(0)
    part, obj = _labels(gen, 40, 44)
    tg = _targets([part], [obj], 32)
    assert torch.equal(tg.mask, tg.part_mask)
    t2p = torch.tensor(VOCAB.text_to_part)
    assert torch.equal(tg.part_tgt[tg.mask], t2p[tg.tgt[tg.mask]])
    # bird / chair / ignore -> background target; cat -> 0, dog -> 1
    obj_r = resize_labels(obj, (32, 32))
    assert torch.equal(tg.obj_mask[0], (obj_r == 1) | (obj_r == 3))
    assert set(tg.objm_tgt[0][tg.obj_mask[0]].tolist()) <= {0, 1}
    # the same maps with the official 255 encoding (and the official 255 lookup) give the same targets
    lut255 = [255 if v < 0 else v for v in LUT]
    tg255 = _targets([part.masked_fill(part < 0, 255)], [obj.masked_fill(obj < 0, 255)], 32, 255, lut255)
    for name in ("mask", "obj_mask"):
        assert torch.equal(getattr(tg, name), getattr(tg255, name))
    assert torch.equal(tg.objm_tgt[tg.obj_mask], tg255.objm_tgt[tg255.obj_mask])
    with pytest.raises(ValueError, match="part_labels"):
        _targets([torch.full((8, 8), T)], [obj[:8, :8]], 8)
    with pytest.raises(ValueError, match="collides"):
        _targets([part], [obj], 32, ignore=0)


@pytest.mark.parametrize("per_image", [True, False])
def test_segmentation_matches_naive_values_and_gradients(per_image):
    cfg = LossConfig(per_image=per_image, obj_lambda=0.7, part_lambda=1.3)
    tg, logits, op_logits = _batch(1, requires_grad=True)
    got = segmentation_losses(logits, op_logits, tg, cfg)["total"]
    ref = _naive_segmentation(logits, op_logits, tg, cfg)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    g_got = torch.autograd.grad(got, (logits, op_logits))
    g_ref = torch.autograd.grad(ref, (logits, op_logits))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-5)


def test_per_image_vs_batch_semantics():
    tg, logits, op_logits = _batch(2, sizes=((64, 64), (24, 20)))
    scale = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)  # very different per-image losses
    logits, op_logits = logits * scale, op_logits * scale
    counts = tg.part_mask.flatten(1).sum(1)
    assert counts[0] != counts[1]  # different part-pixel counts weight the pooled mean differently
    atts, _ = _attentions(2, seed=3)
    out = SegmentationOutput(logits, op_logits, torch.zeros(N, 1), atts)
    per_image = partclipseg_loss(out, tg, LossConfig(per_image=True))
    batch = partclipseg_loss(out, tg, LossConfig(per_image=False))
    singles = []
    for i in range(2):
        sub = type(tg)(**{k: (v[i:i + 1] if k in ("tgt", "part_tgt", "objm_tgt", "mask", "part_mask", "obj_mask")
                              else v) for k, v in tg.__dict__.items()})
        one = SegmentationOutput(logits[i:i + 1], op_logits[i:i + 1], out.class_embeddings,
                                 tuple(a[i:i + 1] for a in atts))
        singles.append(partclipseg_loss(one, sub, LossConfig(per_image=False)))  # B=1: both modes agree
        for key, value in partclipseg_loss(one, sub, LossConfig(per_image=True)).items():
            torch.testing.assert_close(value, singles[-1][key])
    for key in per_image:
        torch.testing.assert_close(per_image[key], (singles[0][key] + singles[1][key]) / 2)
    assert abs(float(per_image["object_specific_parts"] - batch["object_specific_parts"])) > 1e-4
    # batch mode: attention terms normalised by (n_obj over the batch) * B
    sep, enh = _naive_attention(atts, tg, LossConfig(per_image=False))
    torch.testing.assert_close(batch["loss_sep"], sep.float())
    torch.testing.assert_close(batch["loss_enh"], enh.float())


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("levels", [(2,), (1, 2)])
def test_attention_losses_match_naive_loops(per_image, drop_last, levels):
    tg, _, _ = _batch(4, sizes=((40, 48), (36, 30), (32, 32)), full_cover=(2,))
    atts, _ = _attentions(3, seed=5, bump=1.0)
    cfg = LossConfig(per_image=per_image, official_unique_drop_last=drop_last, attn_levels=levels)
    got = attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object, cfg)
    sep, enh = _naive_attention(atts, tg, cfg)
    torch.testing.assert_close(got["loss_sep"], sep.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(got["loss_enh"], enh.float(), atol=1e-6, rtol=0)


def test_unique_drop_last_switch_on_fully_covered_image():
    gen = torch.Generator().manual_seed(7)
    part, _ = _labels(gen, 32, 32, full_cover=True)
    obj = torch.full((32, 32), 1)  # one seen object (cat) covers the whole image: no ignore pixel
    part = torch.where(torch.rand(32, 32, generator=gen) < 0.5, 0, 1)  # cat's tail / cat's head everywhere
    tg = _targets([part], [obj], 32)
    atts, _ = _attentions(1, seed=8, bump=4.0)  # both parts attend to the same keys -> overlap
    official = attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object, LossConfig())
    fixed = attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object,
                             LossConfig(official_unique_drop_last=False))
    assert float(official["loss_sep"]) == 0.0 and float(official["loss_enh"]) == 0.0  # the cat was dropped
    assert float(fixed["loss_sep"]) > 0.0 and float(fixed["loss_enh"]) > 0.0
    # with an ignore pixel in the image both switches agree
    obj[0, 0] = -1
    tg = _targets([part], [obj], 32)
    a, b = (attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object,
                             LossConfig(official_unique_drop_last=v)) for v in (True, False))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sep_has_no_gradient_enh_has():
    tg, _, _ = _batch(9, sizes=((32, 32), (32, 32)), part_block=8)  # every part also exists on the 4x4 token grid
    atts, scores = _attentions(2, seed=9, requires_grad=True)
    got = attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object, LossConfig())
    assert not got["loss_sep"].requires_grad  # thresholds and counts only
    (g_enh,) = torch.autograd.grad(got["loss_enh"], scores[2], retain_graph=True)
    assert torch.isfinite(g_enh).all() and g_enh.abs().max() > 0
    assert torch.autograd.grad(got["loss_enh"], scores[0], allow_unused=True)[0] is None  # level 2 only
    # in the total, the attention gradient is exactly enh_lambda * grad(loss_enh)
    _, logits, op_logits = _batch(9, sizes=((32, 32), (32, 32)), part_block=8)
    total = partclipseg_loss(SegmentationOutput(logits, op_logits, torch.zeros(N, 1), atts), tg)["total"]
    (g_total,) = torch.autograd.grad(total, scores[2])
    torch.testing.assert_close(g_total, LossConfig().enh_lambda * g_enh)


def test_part_missing_on_token_grid_saturates_enh():
    """A part present at S x S but on no token-grid pixel has an all-zero map: mmax = 0, L_enh = 1, no gradient."""
    part = torch.full((32, 32), 1)  # cat's head on the token-grid pixels (multiples of 8) ...
    part[1::8, 1::8] = 0  # ... and cat's tail only between them
    obj = torch.full((32, 32), 1)
    obj[-1, -1] = -1
    tg = _targets([part], [obj], 32)
    atts, scores = _attentions(1, seed=10, requires_grad=True)
    got = attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object, LossConfig())
    assert float(got["loss_enh"].detach()) == 1.0
    assert torch.autograd.grad(got["loss_enh"], scores[2])[0].abs().max() == 0


def test_empty_background_nan_rule():
    tg, logits, op_logits = _batch(11, full_cover=(0,), requires_grad=True)
    assert tg.obj_mask[0].all() and not tg.obj_mask[1].all() and tg.part_mask[0].any()
    atts, _ = _attentions(2, seed=11)
    out = SegmentationOutput(logits, op_logits, torch.zeros(N, 1), atts)
    official = partclipseg_loss(out, tg, LossConfig())
    assert all(torch.isfinite(v) for v in official.values())
    sub = lambda i: type(tg)(**{k: (v[i:i + 1] if torch.is_tensor(v) and v.dim() == 3 else v)  # noqa: E731
                                for k, v in tg.__dict__.items()})
    second = partclipseg_loss(SegmentationOutput(logits[1:], op_logits[1:], out.class_embeddings,
                                                 tuple(a[1:] for a in atts)), sub(1), LossConfig())
    torch.testing.assert_close(official["total"], second["total"] / 2)  # sample 0 counts as 0
    grads = torch.autograd.grad(official["total"], (logits, op_logits))
    assert all(torch.isfinite(g).all() and g[0].abs().max() == 0 and g[1].abs().max() > 0 for g in grads)
    # skip only the empty term instead
    skipped = partclipseg_loss(out, tg, LossConfig(official_nan_to_zero=False))
    first = partclipseg_loss(SegmentationOutput(logits[:1], op_logits[:1], out.class_embeddings,
                                                tuple(a[:1] for a in atts)), sub(0),
                             LossConfig(official_nan_to_zero=False))
    assert float(first["object_specific_background"].detach()) == 0.0 and float(first["total"].detach()) > 0
    torch.testing.assert_close(skipped["total"], (first["total"] + second["total"]) / 2)
    grads = torch.autograd.grad(skipped["total"], (logits, op_logits))
    assert all(torch.isfinite(g).all() and g[0].abs().max() > 0 for g in grads)
    # whole-batch mode: image 1 has background pixels, so nothing is empty
    batch = segmentation_losses(logits, op_logits, tg, LossConfig(per_image=False))
    torch.testing.assert_close(batch["total"], _naive_segmentation(logits, op_logits, tg, LossConfig(per_image=False)))


def test_use_attention_needs_attentions_and_levels_are_checked():
    tg, logits, op_logits = _batch(12)
    with pytest.raises(ValueError, match="output_attentions"):
        partclipseg_loss(SegmentationOutput(logits, op_logits, torch.zeros(N, 1)), tg)
    no_attn = partclipseg_loss(SegmentationOutput(logits, op_logits, torch.zeros(N, 1)), tg,
                               LossConfig(use_attention=False))
    assert "loss_sep" not in no_attn
    torch.testing.assert_close(no_attn["total"], segmentation_losses(logits, op_logits, tg)["total"])
    atts, _ = _attentions(2, layers=2)
    with pytest.raises(ValueError, match="attn_levels"):
        attention_losses(atts, tg, VOCAB.text_to_part, VOCAB.text_to_object, LossConfig())
    with pytest.raises(ValueError, match="attn_levels"):
        LossConfig(attn_levels=(2, 2))
    assert LossConfig(attn_levels=[0, 1]).attn_levels == (0, 1)


@pytest.mark.parametrize("per_image", [True, False])
def test_clipseg_loss_matches_naive(per_image):
    gen = torch.Generator().manual_seed(13)
    parts = [_labels(gen, h, w)[0] for h, w in ((40, 48), (30, 36))]
    logits = torch.randn(2, T + 1, 32, 32, generator=gen, requires_grad=True)
    got = clipseg_loss(logits, parts, -1, LossConfig(per_image=per_image))["total"]
    tgt = torch.stack([resize_labels(p, (32, 32)) for p in parts])
    y = F.one_hot(tgt.clamp(min=0), T + 1).float() * (tgt >= 0).unsqueeze(-1)
    y[..., -1] = (tgt < 0).float()
    weight = torch.ones(T + 1)
    weight[-1] = 0.05
    ref = F.binary_cross_entropy_with_logits(logits.permute(0, 2, 3, 1), y, weight=weight)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(ref, logits)[0])


@pytest.mark.parametrize("per_image", [True, False])
def test_untrained_classes_leave_the_object_specific_terms_as_on_the_training_vocabulary(per_image):
    """``trained`` (supervision=parts+objects): the object-specific terms on the full vocabulary with the
    unseen object's classes left out equal the terms on the vocabulary without those classes (values and
    the gradients of the trained channels); the left-out channels get no gradient at all."""
    g = torch.Generator().manual_seed(7)
    t2p = torch.tensor([0, 1, 2, 0, 1, 0, 2])  # classes of objects 0, 0, 0, 1, 1, 2, 2
    t2o = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    trained = t2o != 1  # object 1 is unseen: its two classes are left out
    b, s, p, o = 3, 8, 3, 3
    seen_classes = trained.nonzero().flatten()
    full_to_sub = torch.full((7,), -1)
    full_to_sub[seen_classes] = torch.arange(len(seen_classes))
    labels = seen_classes[torch.randint(len(seen_classes), (b, s, s), generator=g)]
    labels[:, :2] = -1  # background rows
    labels[0, 3:5] = -1  # an unseen object's part pixels: ignore
    objects = torch.where(labels >= 0, t2o[labels.clamp(min=0)], -1)
    objects[0, 3:5] = 1  # ... but its object label is kept
    lut = torch.arange(o)
    logits = torch.randn(b, p + o + 1, s, s, generator=g)
    full = torch.randn(b, 8, s, s, generator=g, requires_grad=True)
    sub_index = torch.cat([seen_classes, torch.tensor([7])])
    sub = full.detach()[:, sub_index].clone().requires_grad_(True)
    config = LossConfig(per_image=per_image, background_weight=0.3)
    with_trained = segmentation_losses(logits, full, build_targets(labels, objects, t2p, t2o, lut, s, trained=trained),
                                       config)
    sub_labels = torch.where(labels >= 0, full_to_sub[labels.clamp(min=0)], -1)
    on_subset = segmentation_losses(logits, sub, build_targets(sub_labels, objects, t2p[trained], t2o[trained], lut, s),
                                    config)
    for key in ("object_specific_parts", "object_specific_background", "generalized_parts", "objects"):
        torch.testing.assert_close(with_trained[key], on_subset[key], rtol=1e-6, atol=1e-7)
    assert float(with_trained["object_specific_parts"].detach()) > 0
    assert float(with_trained["object_specific_background"].detach()) > 0
    (with_trained["object_specific_parts"] + with_trained["object_specific_background"]).backward()
    (on_subset["object_specific_parts"] + on_subset["object_specific_background"]).backward()
    torch.testing.assert_close(full.grad[:, sub_index], sub.grad, rtol=1e-5, atol=1e-8)
    assert torch.count_nonzero(full.grad[:, ~torch.cat([trained, torch.tensor([True])])]) == 0
    # without `trained` the unseen channels would be pushed down on every labelled pixel
    plain = segmentation_losses(logits, full.detach().requires_grad_(True),
                                build_targets(labels, objects, t2p, t2o, lut, s), config)
    assert not torch.isclose(plain["object_specific_parts"], with_trained["object_specific_parts"])
    with pytest.raises(ValueError, match="trained excludes"):
        build_targets(torch.full((1, s, s), 3), objects[:1], t2p, t2o, lut, s, trained=trained)
    with pytest.raises(ValueError, match="entries"):
        build_targets(labels, objects, t2p, t2o, lut, s, trained=trained[:5])


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("full_cover", [(), (0,)])
def test_object_cross_entropy_switch_adds_the_weighted_softmax_term(per_image, full_cover):
    """loss.object_ce_lambda (not official): + lambda * mean over pixels of -log softmax(object channels)[y],
    y = the pixel's model object on obj_mask, else the background channel; 0 leaves the official total.
    Images of different sizes, one fully covered by objects (the official NaN rule drops it per image)."""
    tg, logits, op_logits = _batch(3, sizes=((40, 48), (36, 30), (24, 20)), full_cover=full_cover, requires_grad=True)
    base_cfg = LossConfig(per_image=per_image)
    base = segmentation_losses(logits, op_logits, tg, base_cfg)
    assert "objects_ce" not in base
    got = segmentation_losses(logits, op_logits, tg, LossConfig(per_image=per_image, object_ce_lambda=0.5))
    object_logits = logits[:, P:].permute(0, 2, 3, 1)  # [B,S,S,O+1]
    groups = [[i] for i in range(len(logits))] if per_image else [list(range(len(logits)))]
    ce_per_group, kept = [], []
    for g in groups:
        values = []
        for b in g:
            for y in range(logits.shape[-2]):
                for x in range(logits.shape[-1]):
                    target = int(tg.objm_tgt[b, y, x]) if bool(tg.obj_mask[b, y, x]) else object_logits.shape[-1] - 1
                    values.append(-torch.log_softmax(object_logits[b, y, x], 0)[target])
        ce_per_group.append(torch.stack(values).mean())
        kept.append(not bool(tg.obj_mask[g].all()))  # official: no background pixel -> the group's loss is 0
    if full_cover and per_image:
        assert kept == [False, True, True]
    ce = torch.stack([c if k else c * 0 for c, k in zip(ce_per_group, kept)]).mean()
    torch.testing.assert_close(got["objects_ce"], ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["total"], base["total"] + 0.5 * ce, atol=1e-5, rtol=1e-5)
    assert float(ce.detach()) > 0.1  # random logits: a term far from zero, so the checks above can fail
    if full_cover:  # every image has S x S pixels, so only a dropped image tells the two groupings apart
        other = segmentation_losses(logits, op_logits, tg, LossConfig(per_image=not per_image, object_ce_lambda=0.5))
        assert abs(float(other["objects_ce"].detach()) - float(got["objects_ce"].detach())) > 1e-3


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("full_cover", [(), (0,)])
def test_object_identity_switch_adds_a_softmax_over_the_object_channels_on_object_pixels(per_image, full_cover):
    """loss.object_identity_lambda (not official): + lambda * mean over the obj_mask pixels of
    -log softmax(the O object channels, no background)[the pixel's object]; background pixels and the
    background channel play no part; 0 leaves the official total. Images of different sizes, one fully
    covered by objects (the official NaN rule drops it per image)."""
    tg, logits, op_logits = _batch(3, sizes=((40, 48), (36, 30), (24, 20)), full_cover=full_cover, requires_grad=True)
    base = segmentation_losses(logits, op_logits, tg, LossConfig(per_image=per_image))
    assert "object_identity" not in base
    cfg = LossConfig(per_image=per_image, object_identity_lambda=0.3)
    got = segmentation_losses(logits, op_logits, tg, cfg)
    object_logits = logits[:, P:-1].permute(0, 2, 3, 1)  # [B,S,S,O]: the background channel left out
    groups = [[i] for i in range(len(logits))] if per_image else [list(range(len(logits)))]
    per_group, kept = [], []
    for g in groups:
        values = [-torch.log_softmax(object_logits[b, y, x], 0)[int(tg.objm_tgt[b, y, x])]
                  for b in g for y in range(logits.shape[-2]) for x in range(logits.shape[-1])
                  if bool(tg.obj_mask[b, y, x])]
        assert values  # every group holds object pixels, so the term is not trivially 0
        per_group.append(torch.stack(values).mean())
        kept.append(not bool(tg.obj_mask[g].all()))  # official: no background pixel -> the group's loss is 0
    term = torch.stack([c if k else c * 0 for c, k in zip(per_group, kept)]).mean()
    torch.testing.assert_close(got["object_identity"], term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["total"], base["total"] + 0.3 * term, atol=1e-5, rtol=1e-5)
    assert float(term.detach()) > 0.1  # random logits: far from zero, so the checks above can fail
    # the background channel and the background pixels' object logits get no gradient from the term
    grad, = torch.autograd.grad(got["object_identity"], logits)
    assert float(grad[:, -1].abs().max()) == 0.0
    assert float(grad[:, P:-1].permute(1, 0, 2, 3)[:, ~tg.obj_mask].abs().max()) == 0.0
    assert float(grad[:, P:-1].permute(1, 0, 2, 3)[:, tg.obj_mask].abs().max()) > 0.0


def test_architectures_without_the_object_channels_refuse_the_object_cross_entropy_switch():
    from partclipseg.errors import ConfigError
    from partclipseg.train import load_recipe

    for recipe, overrides in (("toy_world_partcatseg", []), ("toy_world", ["architecture=clipseg", "supervision=parts",
                                                                         "loss.pixel_stride=1",
                                                                         "loss.balanced_objects=false"])):
        for key in ("object_ce_lambda", "object_identity_lambda"):
            with pytest.raises(ConfigError, match=key):
                load_recipe(recipe, ["root=/data", *overrides, f"loss.{key}=1"]).validate()
            load_recipe(recipe, ["root=/data", *overrides, f"loss.{key}=0"]).validate()  # off: accepted
            load_recipe("toy_world", ["root=/data", f"loss.{key}=1"]).validate()  # partclipseg: accepted
    with pytest.raises(ConfigError, match="object_identity_lambda"):
        load_recipe("toy_world", ["root=/data", "loss.object_identity_lambda=-0.5"]).validate()


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("full_cover", [(), (0,)])
@pytest.mark.parametrize("nan_to_zero", [True, False])
def test_balanced_objects_switch_weighs_object_and_background_pixels_half_each(per_image, full_cover, nan_to_zero):
    """loss.balanced_objects (not official): the object term = (mean BCE over object pixels + mean BCE over
    the other pixels) / 2 per group, with the O+1 channels' weights as in the official term (background
    channel weighted by background_weight). A group with one kind of pixel keeps its one mean: an image
    covered by objects, and the third image, which holds only a part-less object (no obj_mask pixel). With
    the official NaN rule a group with object pixels but no other pixel is dropped (its terms 0). The other
    terms are untouched. Checked against F.binary_cross_entropy_with_logits on explicit one-hot targets."""
    gen = torch.Generator().manual_seed(7)
    labels = [_labels(gen, h, w, full_cover=i in full_cover) for i, (h, w) in enumerate(((40, 48), (36, 30)))]
    labels.append((torch.full((24, 20), -1), torch.zeros(24, 20, dtype=torch.long)))  # a bird alone: no parts
    tg = _targets([p for p, _ in labels], [o for _, o in labels], 32)
    assert not tg.obj_mask[2].any()
    assert int(tg.obj_mask[1].sum()) not in (0, 512)  # both kinds, in unequal numbers: the switch matters
    # object pixels' channels raised, so that their mean BCE differs from the other pixels' one
    logits = (torch.randn(3, N, 32, 32, generator=gen) + 2.0 * tg.obj_mask[:, None].float()).requires_grad_(True)
    op_logits = torch.randn(3, T + 1, 32, 32, generator=gen)
    common = dict(per_image=per_image, background_weight=0.3, official_nan_to_zero=nan_to_zero)
    base = segmentation_losses(logits, op_logits, tg, LossConfig(**common))
    got = segmentation_losses(logits, op_logits, tg, LossConfig(**common, balanced_objects=True))
    y = tg.generalized_onehot().permute(0, 2, 3, 1)[..., P:]
    x = logits.permute(0, 2, 3, 1)[..., P:]
    w = torch.ones(N - P)
    w[-1] = 0.3
    groups = [[i] for i in range(len(logits))] if per_image else [list(range(len(logits)))]
    expected, plain = [], []
    for g in groups:
        om = tg.obj_mask[g]
        dropped = nan_to_zero and bool(om.any()) and not bool((~om).any())
        means = [F.binary_cross_entropy_with_logits(x[g][m], y[g][m], weight=w) for m in (om, ~om) if m.any()]
        expected.append(torch.stack(means).mean() * (0.0 if dropped else 1.0))
        plain.append(F.binary_cross_entropy_with_logits(x[g], y[g], weight=w) * (0.0 if dropped else 1.0))
    if full_cover and per_image:
        assert not (~tg.obj_mask[0]).any()  # the fully covered image: one mean only (dropped by the NaN rule)
    torch.testing.assert_close(got["objects"], torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base["objects"], torch.stack(plain).mean(), atol=1e-5, rtol=1e-5)
    assert abs(float(got["objects"] - base["objects"])) > 1e-3  # the switch changes the term
    for key in ("object_specific_parts", "generalized_parts", "object_specific_background"):
        torch.testing.assert_close(got[key], base[key])
    # per pixel, the gradient is the official one times N / (2 n_object) on object pixels and N / (2 n_other)
    # on the others (N / n where a group has one kind only), N, n_object, n_other counted per group
    grad_on = torch.autograd.grad(got["objects"], logits, retain_graph=True)[0][:, P:]
    grad_base = torch.autograd.grad(base["objects"], logits)[0][:, P:]
    for g in groups:
        om = tg.obj_mask[g]
        n_on, n_off, kinds = int(om.sum()), int((~om).sum()), int(om.any()) + int((~om).any())
        factor = torch.where(om, om.numel() / max(n_on, 1), om.numel() / max(n_off, 1)) / kinds
        torch.testing.assert_close(grad_on[g], grad_base[g] * factor[:, None], atol=1e-9, rtol=1e-4)


def test_balanced_objects_term_on_sampled_pixels_is_the_balanced_term_of_those_pixels():
    """With loss.pixel_stride, the balanced object term of the sampled logits equals the balanced term
    computed on the full maps' pixels at the sample (targets sampled the same way): the switch reads the
    sample's own object / other pixel counts."""
    from partclipseg.losses import PixelSample

    tg, logits, op_logits = _batch(6, sizes=((40, 48), (36, 30)))
    cfg = LossConfig(balanced_objects=True, official_nan_to_zero=False)
    sample = PixelSample(4, ((1, 2), (3, 0)))
    sampled = segmentation_losses(sample.select(logits), sample.select(op_logits), tg.sampled(sample), cfg)
    y = tg.generalized_onehot().permute(0, 2, 3, 1)[..., P:]
    x = logits.permute(0, 2, 3, 1)[..., P:]
    w = torch.ones(N - P)
    w[-1] = cfg.background_weight
    per_image = []
    for b, (r, c) in enumerate(sample.offsets):
        om = tg.obj_mask[b, r::4, c::4]
        xs, ys = x[b, r::4, c::4], y[b, r::4, c::4]
        per_image.append(torch.stack([F.binary_cross_entropy_with_logits(xs[m], ys[m], weight=w)
                                      for m in (om, ~om) if m.any()]).mean())
    torch.testing.assert_close(sampled["objects"], torch.stack(per_image).mean(), atol=1e-5, rtol=1e-5)


def test_object_identity_term_on_sampled_pixels_is_the_term_of_those_pixels():
    """With loss.pixel_stride, the object-identity term of the sampled logits equals the term computed on
    the full maps' object pixels at the sample (targets sampled the same way)."""
    from partclipseg.losses import PixelSample

    tg, logits, op_logits = _batch(7, sizes=((40, 48), (36, 30)))
    sample = PixelSample(4, ((0, 3), (2, 1)))
    cfg = LossConfig(object_identity_lambda=1.0, official_nan_to_zero=False)
    sampled = segmentation_losses(sample.select(logits), sample.select(op_logits), tg.sampled(sample), cfg)
    x = logits.permute(0, 2, 3, 1)[..., P:-1]
    per_image = []
    for b, (r, c) in enumerate(sample.offsets):
        om = tg.obj_mask[b, r::4, c::4]
        assert om.any()
        per_image.append(F.cross_entropy(x[b, r::4, c::4][om], tg.objm_tgt[b, r::4, c::4][om]))
    torch.testing.assert_close(sampled["object_identity"], torch.stack(per_image).mean(), atol=1e-5, rtol=1e-5)


def test_architectures_without_the_object_channels_refuse_the_balanced_objects_switch():
    from partclipseg.errors import ConfigError
    from partclipseg.train import load_recipe

    for recipe, overrides in (("toy_world_partcatseg", []),
                              ("toy_world", ["architecture=clipseg", "supervision=parts", "loss.pixel_stride=1"])):
        with pytest.raises(ConfigError, match="balanced_objects"):
            load_recipe(recipe, ["root=/data", *overrides, "loss.balanced_objects=true"]).validate()
    assert load_recipe("toy_world", ["root=/data", "loss.balanced_objects=true"]).loss.balanced_objects
