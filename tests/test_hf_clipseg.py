"""Plain CLIPSeg in Hugging Face layout: ``save_pretrained`` -> our loader -> the same per-prompt logits as
``transformers.CLIPSegForImageSegmentation``, on random small configs covering every option that
changes the computation; options we cannot honour are refused by name."""
from __future__ import annotations

import pytest
import torch

from partclipseg.errors import ConfigError
from partclipseg.hf_clipseg import hf_clipseg_config
from partclipseg.model import CLIPSegBaseline
from partclipseg.weights import load_pretrained

# (text, vision, top-level) CLIPSegConfig options; each case changes several computation-relevant ones
CASES = {
    "complex-head-cond0": (dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48),
                           dict(num_hidden_layers=3, hidden_size=48, num_attention_heads=4, intermediate_size=64,
                                image_size=32, patch_size=8),
                           dict(projection_dim=24, extract_layers=[0, 2], reduce_dim=16, decoder_num_attention_heads=2,
                                decoder_intermediate_size=40, conditional_layer=0,
                                use_complex_transposed_convolution=True)),
    "simple-head-cond2-eos2": (dict(num_hidden_layers=1, hidden_size=24, num_attention_heads=2, intermediate_size=40,
                                    eos_token_id=2),
                               dict(num_hidden_layers=4, hidden_size=40, num_attention_heads=5, intermediate_size=56,
                                    image_size=48, patch_size=16, layer_norm_eps=1e-6),
                               dict(projection_dim=20, extract_layers=[1, 2, 3], reduce_dim=12,
                                    decoder_num_attention_heads=3, decoder_intermediate_size=20, conditional_layer=2,
                                    use_complex_transposed_convolution=False)),
    "embedding-layer-patch12": (dict(num_hidden_layers=3, hidden_size=16, num_attention_heads=4, intermediate_size=24,
                                     max_position_embeddings=12, layer_norm_eps=1e-4),
                                dict(num_hidden_layers=2, hidden_size=36, num_attention_heads=6, intermediate_size=30,
                                     image_size=36, patch_size=12),
                                dict(projection_dim=28, extract_layers=[-1, 0, 1], reduce_dim=24,
                                     decoder_num_attention_heads=4, decoder_intermediate_size=32, conditional_layer=1,
                                     use_complex_transposed_convolution=True)),
    "one-layer-decoder": (dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=8, intermediate_size=16),
                          dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=96,
                               image_size=64, patch_size=16),
                          dict(projection_dim=8, extract_layers=[1], reduce_dim=8, decoder_num_attention_heads=1,
                               decoder_intermediate_size=12, conditional_layer=0,
                               use_complex_transposed_convolution=True)),
}
VOCAB = 64


def _hf_model(case: str, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    text, vision, top = CASES[case]
    text = dict(dict(vocab_size=VOCAB, eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 2, pad_token_id=0), **text)
    config = transformers.CLIPSegConfig(text_config=text, vision_config=vision, **top)
    torch.manual_seed(seed)
    model = transformers.CLIPSegForImageSegmentation(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine and biases (the init leaves them at 1 / 0)
        for name, param in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def _inputs(hf, size: int, prompts: int = 3, images: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    text = hf.config.text_config
    length = min(8, text.max_position_embeddings)
    ids = torch.randint(1, VOCAB - 2, (prompts, length), generator=g)
    mask = torch.zeros(prompts, length, dtype=torch.long)
    for row, end in enumerate(range(length - 1, 0, -max(1, length // prompts))[:prompts]):
        ids[row, end] = VOCAB - 1  # the end-of-text token is the largest id (found by argmax or by eos id)
        ids[row, end + 1:] = 0
        mask[row, :end + 1] = 1
    pixels = torch.randn(images, 3, size, size, generator=g)
    return pixels, ids, mask


def _compare(hf, ours, pixels, ids, mask) -> float:
    b, p = pixels.shape[0], ids.shape[0]
    with torch.no_grad():
        ref = hf(pixel_values=pixels.repeat_interleave(p, 0), input_ids=ids.repeat(b, 1),
                 attention_mask=mask.repeat(b, 1)).logits
        out = ours(pixels, ids, mask).logits
    ref = ref.reshape(b, p, *ref.shape[-2:])
    assert out.shape == (b, p + 1, *ref.shape[-2:])  # + the constant background row
    assert torch.count_nonzero(out[:, -1]) == 0
    return float((ref - out[:, :p]).abs().max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_equal_transformers(case, tmp_path):
    hf = _hf_model(case)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, CLIPSegBaseline) and ours.visual_adapter is None and ours.non_object_embedding is None
    native = hf.config.vision_config.image_size
    patch = hf.config.vision_config.patch_size
    for size in (native, native + 2 * patch):  # native grid and an interpolated position table
        inputs = _inputs(hf, size)
        hf.double(), ours.double()
        diff64 = _compare(hf, ours, inputs[0].double(), *inputs[1:])
        hf.float(), ours.float()
        ref_scale = 1.0
        with torch.no_grad():
            ref_scale = float(hf(pixel_values=inputs[0][:1].repeat(3, 1, 1, 1), input_ids=inputs[1],
                                 attention_mask=inputs[2]).logits.abs().max())
        diff32 = _compare(hf, ours, *inputs)
        print(f"{case} size {size}: max |logit diff| float64 {diff64:.2e}, float32 {diff32:.2e} "
              f"(max |logit| {ref_scale:.1f})")
        assert diff64 < 1e-5
        assert diff32 < 1e-5 * max(1.0, ref_scale)


def test_legacy_config_dicts_and_preprocessor_are_read():
    data = {"model_type": "clipseg", "text_config": {"hidden_size": 99}, "text_config_dict": {"hidden_size": 32,
            "num_attention_heads": 4}, "vision_config_dict": {"patch_size": 16, "hidden_size": 64,
                                                              "num_attention_heads": 4},
            "use_complex_transposed_convolution": True}
    config = hf_clipseg_config(data, {"size": {"height": 224, "width": 224}, "image_mean": [0.5, 0.5, 0.5],
                                      "image_std": [0.25, 0.25, 0.25]})
    assert config.text.hidden_size == 32 and config.vision.patch_size == 16
    assert config.image_size == 224 and config.image_mean == (0.5, 0.5, 0.5)
    assert config.decoder.complex_transposed_convolution and config.background == "none"
    assert hf_clipseg_config({"model_type": "clipseg", "vision_config": {"patch_size": 16}}).image_size == 352


@pytest.mark.parametrize("change, name", [
    ({"vision_config": {"hidden_act": "gelu", "patch_size": 16}}, "hidden_act"),
    ({"text_config": {"hidden_act": "gelu"}, "vision_config": {"patch_size": 16}}, "hidden_act"),
    ({"vision_config": {"num_channels": 1, "patch_size": 16}}, "num_channels"),
    ({"vision_config": {"patch_size": 16}, "text_config": {"eos_token_id": 5}}, "eos_token_id"),
    ({"vision_config": {"patch_size": 16}, "conditional_layer": 3}, "conditional_layer"),
    ({"vision_config": {"patch_size": 6}}, "patch_size"),
    ({"vision_config": {"patch_size": 16, "image_size": [224, 160]}}, "image_size"),
])
def test_options_that_cannot_be_honoured_are_refused_by_name(change, name):
    data = dict({"model_type": "clipseg"}, **change)
    with pytest.raises(ConfigError, match=name):
        hf_clipseg_config(data)


def test_a_transformers_folder_runs_in_the_evaluator_with_a_benchmark_vocabulary(tmp_path, capsys):
    """Any vocabulary, through the CLI evaluator: the plain CLIPSeg model answers all 116 prompts."""
    import json

    transformers = pytest.importorskip("transformers")
    from partclipseg.cli import main
    from partclipseg.data import synthetic

    torch.manual_seed(0)
    config = transformers.CLIPSegConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16, extract_layers=[0, 1], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=24)
    folder = tmp_path / "hf"
    transformers.CLIPSegForImageSegmentation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 64}}))
    assert load_pretrained(folder).config.image_size == 64
    root = synthetic.make_pascal_part(tmp_path / "pascal")
    out = tmp_path / "r.json"
    code = main(["evaluate", "--dataset", "pascal_part_116", "--root", str(root), "--model", str(folder),
                 "--protocol", "oracle-obj", "--limit", "3", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert len(results["metrics"]["per_class"]) == 116
