"""Tests of partclipseg.preprocess: image loading edge cases and the CLIPSeg processor (SPEC §2.1)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import PIL
from PIL import Image
from safetensors.torch import load_file

from partclipseg.errors import ConfigError, ImageError
from partclipseg.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess
from partclipseg.resample import bilinear_coefficients, resize_bilinear

FIXTURES = Path(__file__).parent / "fixtures"
PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its IHDR but has no pixel data (nothing big is allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _reference_processor(img: np.ndarray, size: int) -> np.ndarray:
    """Independent float64 re-statement of the processor's arithmetic, for tolerance checks."""
    r = resize_bilinear(img, size, size).astype(np.float64)
    return ((r / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)


# ----------------------------------------------------------------- reference fixtures
def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    return float((a - b).abs().max())


@pytest.mark.reference
def test_processor_matches_model_inputs_fixture(ref_dir: Path):
    data = load_file(ref_dir / "inputs.safetensors")
    ref = data["pixel_values"]
    count = len([k for k in data if k.startswith("raw_image") and k.endswith("_hwc_uint8")])
    assert count == ref.shape[0] > 0
    images = [data[f"raw_image{i}_hwc_uint8"].numpy() for i in range(count)]
    out = preprocess(images, ref.shape[-1])
    assert _max_abs(out, ref) < 1e-6
    assert torch.equal(out, ref)  # bit-exact with the HF float op order


@pytest.mark.reference
def test_processor_matches_train_fixture_chw_tensors(ref_dir: Path):
    data = load_file(ref_dir / "train.safetensors")
    ref = data["model_input.pixel_values"]
    count = len([k for k in data if k.startswith("image") and k.endswith("_chw_uint8")])
    images = [data[f"image{i}_chw_uint8"] for i in range(count)]  # CHW uint8 tensors, fed as-is (treated as RGB)
    assert len(images) == ref.shape[0]
    out = preprocess(images, ref.shape[-1])
    assert _max_abs(out, ref) < 1e-6
    assert torch.equal(out, ref)


@pytest.mark.reference
def test_processor_matches_infer_fixture_png(ref_dir: Path):
    ref = load_file(ref_dir / "infer.safetensors")["model_input.pixel_values"]
    image = load_image(ref_dir / "infer_image.png")
    out = preprocess(image, ref.shape[-1])
    assert _max_abs(out, ref) < 1e-6
    assert torch.equal(out, ref)
    # a path goes through load_image inside preprocess
    assert torch.equal(preprocess(str(ref_dir / "infer_image.png"), ref.shape[-1]), ref)


# ----------------------------------------------------------------- Pillow 9.5 bilinear resize
def test_resize_matches_pillow95_golden_cases():
    """Bit-exact against outputs of Pillow 9.5 itself (tall, wide, up, down, one axis, 157 taps, copy)."""
    data = np.load(FIXTURES / "pillow95" / "bilinear.npz")
    sizes = data["sizes"]
    assert len(sizes) >= 10
    for i, (h, w, oh, ow) in enumerate(sizes.tolist()):
        image, expected = data[f"case{i}.input"], data[f"case{i}.output"]
        assert image.shape == (h, w, 3) and expected.shape == (oh, ow, 3)
        got = resize_bilinear(image, oh, ow)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        assert np.array_equal(got, expected), f"case {i}: {h}x{w} -> {oh}x{ow}, max diff " \
            f"{np.abs(got.astype(int) - expected).max()}"


def _installed_pillow_resize(image: np.ndarray, oh: int, ow: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((ow, oh), Image.Resampling.BILINEAR))


def _installed_pillow_is_9_5_here(h: int, w: int, oh: int) -> bool:
    """Where the installed Pillow computes Pillow 9.5's bytes: every Pillow < 13, except that
    Pillow >= 12.2 resizes an image taller than 100x its width vertically first when the height
    shrinks (one grey level apart at some pixels); Pillow 13 changed the pass order more widely."""
    return PILLOW_MAJOR < 13 and not (h > 100 * w and oh < h)


def test_resize_against_installed_pillow():
    """Random sizes and aspect ratios, up and down: exact where the installed Pillow is 9.5's
    arithmetic, never more than one grey level apart anywhere."""
    rng = np.random.default_rng(7)
    sizes = [1, 2, 3, 5, 8, 16, 31, 32, 33, 64, 97, 160, 352, 353, 500, 707]
    exact_cases = 0
    for trial in range(120):
        h, w, oh, ow = (int(v) for v in rng.choice(sizes, 4))
        if trial % 10 == 0:
            h, w = int(rng.integers(300, 900)), int(rng.integers(1, 6))  # extreme aspect ratios
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if trial % 2:
            image[..., 0] = (np.add.outer(np.arange(h) * 5, np.arange(w) * 3) % 256).astype(np.uint8)
        got = resize_bilinear(image, oh, ow).astype(int)
        expected = _installed_pillow_resize(image, oh, ow).astype(int)
        diff = int(np.abs(got - expected).max())
        if _installed_pillow_is_9_5_here(h, w, oh):
            exact_cases += 1
            assert diff == 0, f"{h}x{w} -> {oh}x{ow}: {diff} grey levels from Pillow {PIL.__version__}"
        else:
            assert diff <= 1, f"{h}x{w} -> {oh}x{ow}: {diff} grey levels from Pillow {PIL.__version__}"
    assert exact_cases > 0 or PILLOW_MAJOR >= 13


def test_resize_of_official_sizes_against_installed_pillow():
    """The official case: typical photos squashed to 352 x 352."""
    rng = np.random.default_rng(8)
    for h, w in ((375, 500), (500, 333), (352, 352), (480, 640), (1200, 900), (97, 61)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        diff = int(np.abs(resize_bilinear(image, 352, 352).astype(int)
                          - _installed_pillow_resize(image, 352, 352).astype(int)).max())
        assert diff <= (0 if _installed_pillow_is_9_5_here(h, w, 352) else 1), (h, w, diff)


def test_resize_shapes_gray_and_errors():
    image = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    assert resize_bilinear(image, 13, 21) is not image
    assert np.array_equal(resize_bilinear(image, 13, 21), image)  # same size: a copy
    gray = image[..., 0].copy()
    assert np.array_equal(resize_bilinear(gray, 7, 40), resize_bilinear(image, 7, 40)[..., 0])
    assert resize_bilinear(image, 7, 40).flags.c_contiguous
    index, weights = bilinear_coefficients(352, 100)  # weights sum to 1.0 in 22-bit fixed point
    assert np.abs(weights.sum(axis=1).astype(np.int64) - (1 << 22)).max() <= weights.shape[1]
    assert index.min() >= 0 and index.max() < 352
    for bad in (image.astype(np.float32), image[None], image[..., 0][..., None][..., 0][0]):
        with pytest.raises(ValueError, match="uint8 image"):
            resize_bilinear(bad, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        resize_bilinear(image, 0, 4)


# ----------------------------------------------------------------- preprocess
def test_preprocess_shape_dtype_and_formula():
    img = _random_rgb(37, 53)
    out = preprocess(img, 32)
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), _reference_processor(img, 32), atol=1e-6)


def test_preprocess_batch_forms_agree():
    imgs = [_random_rgb(20, 30, 1), _random_rgb(20, 30, 2)]
    from_list = preprocess(imgs, 16)
    assert from_list.shape == (2, 3, 16, 16)
    assert torch.equal(preprocess(np.stack(imgs), 16), from_list)
    assert torch.equal(preprocess(tuple(imgs), 16), from_list)
    chw = [torch.from_numpy(i).permute(2, 0, 1) for i in imgs]
    assert torch.equal(preprocess(chw, 16), from_list)


def test_preprocess_bgr_reverses_channels_first():
    img = _random_rgb(25, 31)
    assert torch.equal(preprocess(img, 24, channel_order="BGR"), preprocess(img[:, :, ::-1].copy(), 24))
    assert not torch.equal(preprocess(img, 24, channel_order="BGR"), preprocess(img, 24))


def test_preprocess_custom_mean_std():
    img = _random_rgb(10, 10)
    out = preprocess(img, 10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    expected = (img.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)
    assert np.array_equal(out[0].numpy(), expected)  # same size: PIL resize is the identity


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"size": -3}, {"size": 2.5}, {"size": True}, {"size": 8, "channel_order": "RBG"},
     {"size": 8, "mean": (0.5, 0.5)}, {"size": 8, "std": (0.2, 0.0, 0.2)}],
)
def test_preprocess_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        preprocess(_random_rgb(8, 8), **kwargs)


def test_preprocess_rejects_empty_list():
    with pytest.raises(ImageError, match="no images"):
        preprocess([], 8)


# ----------------------------------------------------------------- arrays and tensors
def test_array_forms():
    img = _random_rgb(6, 9)
    assert np.array_equal(load_image(img), img)
    assert load_image(img) is not img
    assert np.array_equal(load_image(img.transpose(2, 0, 1)), img)  # CHW
    assert np.array_equal(load_image(torch.from_numpy(img)), img)
    gray = img[:, :, 0]
    assert np.array_equal(load_image(gray), np.stack([gray] * 3, axis=2))
    assert np.array_equal(load_image(gray[:, :, None]), np.stack([gray] * 3, axis=2))
    rgba = np.concatenate([img, np.full((6, 9, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(load_image(rgba), img)
    as_float = img.astype(np.float32) / 255
    assert np.array_equal(load_image(as_float), img)
    bf16_chw = torch.from_numpy(as_float).permute(2, 0, 1).to(torch.bfloat16)
    assert load_image(bf16_chw).shape == img.shape
    out = load_image(img)
    assert out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((5,), np.uint8), "dimensions"),
        (np.zeros((1, 5, 5, 3), np.uint8), "list"),
        (np.zeros((5, 6, 7), np.uint8), "channel axis"),
        (np.zeros((0, 5, 3), np.uint8), "zero-sized"),
        (np.zeros((5, 5, 3), np.int32), "dtype"),
        (np.zeros((5, 5, 3), np.uint16), "dtype"),
        (np.zeros((5, 5, 3), bool), "dtype"),
        (np.full((5, 5, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((5, 5, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(ImageError, match=match):
        load_image(array)


def test_unsupported_source_type():
    with pytest.raises(ImageError, match="unsupported image source"):
        load_image(12345)  # type: ignore[arg-type]


# ----------------------------------------------------------------- files
def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(ImageError, match="not found") as err:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(err.value)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_corrupt_file(tmp_path: Path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="not an image") as err:
        load_image(path)
    assert "corrupt.jpg" in str(err.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str):
    buf = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64)).save(buf, format=fmt)
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated") as err:
        load_image(path)
    assert path.name in str(err.value)


def test_zero_sized_pil_image():
    with pytest.raises(ImageError, match="zero-sized"):
        load_image(Image.new("RGB", (0, 4)))


def test_huge_png_header_gives_clear_error(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))  # claims 400M pixels; no pixel data
    with pytest.raises(ImageError, match="too large") as err:
        load_image(path)
    assert "bomb.png" in str(err.value)


def test_large_png_header_over_our_limit(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(12000, 10000))  # 120M: below PIL's error limit, above ours
    with pytest.raises(ImageError, match="max_pixels=100000000"):
        load_image(path)


def test_max_pixels_keyword(tmp_path: Path):
    path = tmp_path / "small.png"
    Image.fromarray(_random_rgb(30, 40)).save(path)
    with pytest.raises(ImageError, match="1200 pixels > max_pixels=1000"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).shape == (30, 40, 3)
    assert load_image(path, max_pixels=None).shape == (30, 40, 3)


def test_png_roundtrip_path_stream_and_pil(tmp_path: Path):
    img = _random_rgb(13, 17)
    path = tmp_path / "rgb.png"
    Image.fromarray(img).save(path)
    assert np.array_equal(load_image(path), img)
    assert np.array_equal(load_image(str(path)), img)
    assert np.array_equal(load_image(io.BytesIO(path.read_bytes())), img)
    with Image.open(path) as pil:
        assert np.array_equal(load_image(pil), img)


def test_16bit_png(tmp_path: Path):
    values = np.random.default_rng(0).integers(0, 65536, size=(9, 11), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")
    out = load_image(path)
    expected = (values >> 8).astype(np.uint8)
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.stack([expected] * 3, axis=2))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_mode_i_pil_image_is_treated_as_16_bit():
    values = np.array([[-5, 0, 256, 65535, 70000]], dtype=np.int32)
    pil = Image.fromarray(values)
    assert pil.mode == "I"
    out = load_image(pil)
    assert out[0, :, 0].tolist() == [0, 0, 1, 255, 255]


def test_rgba_png_drops_alpha(tmp_path: Path):
    rgba = np.concatenate([_random_rgb(8, 8), np.random.default_rng(3).integers(0, 256, (8, 8, 1), dtype=np.uint8)], 2)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    assert np.array_equal(load_image(path), rgba[:, :, :3])


def test_grayscale_and_bilevel_png(tmp_path: Path):
    gray = _random_rgb(8, 8)[:, :, 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    assert np.array_equal(load_image(path), np.stack([gray] * 3, axis=2))
    bilevel = Image.fromarray(gray > 127).convert("1")
    out = load_image(bilevel)
    assert set(np.unique(out).tolist()) <= {0, 255} and out.shape == (8, 8, 3)


def test_palette_with_transparency(tmp_path: Path):
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    pal.info["transparency"] = 1
    path = tmp_path / "pal.png"
    pal.save(path, transparency=1)
    out = load_image(path)
    assert out.shape == (4, 4, 3) and out[0, 0].tolist() == [200, 10, 20]


def test_cmyk_jpeg(tmp_path: Path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, quality=95)  # pure cyan
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_image(path)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - [0, 255, 255]).max() <= 3


def test_exif_orientation_6_rotates(tmp_path: Path):
    img = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    img[:, :20] = (255, 0, 0)
    img[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(img).save(path, exif=exif.tobytes(), quality=95)

    out = load_image(path)
    assert out.shape == (40, 20, 3)  # width and height swapped
    top, bottom = out[:15].reshape(-1, 3).mean(0), out[-15:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 50

    raw = load_image(path, exif_transpose=False)
    assert raw.shape == (20, 40, 3)
