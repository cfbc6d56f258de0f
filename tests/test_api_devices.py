"""The Python API's device choice and its batch-shape messages: a device that is not there is the
package's one-line error (the command line's check), ``segment_parts`` takes ``device=``, and
``predict_batch`` says how to pass grayscale stacks it cannot tell from one image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from partclipseg.errors import PartCLIPSegError
from partclipseg.predictor import Predictor, segment_parts
from partclipseg.vocabulary import Vocabulary

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
PARTS = Vocabulary.from_benchmark("toy_world").object_specific_classes

_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

# (device, what the message says): each is a device that does not exist on this machine
BAD_DEVICES = [
    pytest.param("cuda", "CUDA is not available here", marks=_NO_CUDA, id="cuda"),
    pytest.param("cuda:3", "CUDA is not available here", marks=_NO_CUDA, id="cuda:3-no-cuda"),
    pytest.param(torch.device("cuda", 0), "CUDA is not available here", marks=_NO_CUDA, id="torch.device-cuda"),
    pytest.param(0, "CUDA is not available here", marks=_NO_CUDA, id="int-index"),
    pytest.param(f"cuda:{max(torch.cuda.device_count(), 1) + 7}",
                 "there are" if torch.cuda.is_available() else "CUDA is not available here", id="cuda-beyond-count"),
    pytest.param(torch.device("mps"), "MPS is not available here",
                 marks=pytest.mark.skipif(_MPS, reason="MPS is available here"), id="torch.device-mps"),
    pytest.param("tpu", "is not a device", id="tpu"),
    pytest.param("banana", "is not a device", id="banana"),
    pytest.param("meta", "only cpu, cuda and mps devices are supported", id="meta"),
    pytest.param(1.5, "device must be a device name", id="float"),
]


def _assert_one_line(exc: PartCLIPSegError, says: str) -> None:
    message = str(exc)
    assert says in message
    assert "\n" not in message and message.strip() == message
    assert "--device" not in message  # the API's own wording, not the command line's flag
    assert len(message) < 300


@pytest.fixture(scope="module")
def builtin():
    """The built-in default model on the CPU (nothing downloaded)."""
    return Predictor.from_pretrained(None)


@pytest.fixture(scope="module")
def image():
    from partclipseg.preprocess import load_image

    return load_image(EXAMPLES / "dog.jpg")


# ---------------------------------------------------------------------------- devices that are not there
@pytest.mark.parametrize("device, says", BAD_DEVICES)
def test_from_pretrained_refuses_a_missing_device_before_loading(device, says, monkeypatch):
    import partclipseg.weights as weights

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(weights, "load_pretrained", no_loading)
    monkeypatch.setattr(weights, "load_default_model", no_loading)
    for source in ("toy", None):
        with pytest.raises(PartCLIPSegError) as info:
            Predictor.from_pretrained(source, device=device)
        _assert_one_line(info.value, says)


@pytest.mark.parametrize("device, says", BAD_DEVICES)
def test_predictor_and_segment_parts_refuse_a_missing_device(device, says, builtin, image):
    import copy

    model = copy.deepcopy(builtin.model)  # a device that were accepted would move it in place
    with pytest.raises(PartCLIPSegError) as info:
        Predictor(model, device=device)
    _assert_one_line(info.value, says)
    assert next(model.parameters()).device == torch.device("cpu")  # the model was not touched
    with pytest.raises(PartCLIPSegError) as info:
        segment_parts(image, PARTS, device=device)
    _assert_one_line(info.value, says)
    with pytest.raises(PartCLIPSegError) as info:  # a ready Predictor: the device is checked first
        segment_parts(image, PARTS, model=builtin, device=device)
    _assert_one_line(info.value, says)


@_NO_CUDA
def test_api_message_matches_the_command_line(capsys):
    """The API and ``--device`` give the same reason (one check, two wordings of the flag)."""
    from partclipseg.dist import resolve_device

    with pytest.raises(PartCLIPSegError) as cli:
        resolve_device("cuda")
    with pytest.raises(PartCLIPSegError) as api:
        Predictor.from_pretrained("toy", device="cuda")
    assert str(api.value) == str(cli.value).replace("--device cuda", "device='cuda'").replace(
        "use --device cpu", "use device='cpu'")


# ---------------------------------------------------------------------------- segment_parts(device=)
def _same_segments(a: list[dict], b: list[dict]) -> None:
    assert [d["label"] for d in a] == [d["label"] for d in b]
    for x, y in zip(a, b):
        assert x["score"] == y["score"]
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_segment_parts_on_the_cpu_equals_the_default(builtin, image):
    default = segment_parts(image, PARTS)
    assert default, "the built-in model finds parts on the example dog"
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        _same_segments(segment_parts(image, PARTS, device=device), default)
    # a ready Predictor on that device is used as it is; a model is wrapped on that device
    _same_segments(segment_parts(image, PARTS, model=builtin, device="cpu"), default)
    _same_segments(segment_parts(image, PARTS, model=builtin.model, device="cpu"), default)
    # predict's own keywords still pass through
    box = segment_parts(image, PARTS, device="cpu", box=(0, 0, image.shape[1], image.shape[0]))
    _same_segments(box, segment_parts(image, PARTS, box=(0, 0, image.shape[1], image.shape[0])))


def test_segment_parts_refuses_a_device_other_than_the_predictors(builtin, image):
    """A Predictor passed as ``model`` is not moved: another ``device`` is an error, not ignored."""
    elsewhere = Predictor(_meta_copy(builtin))
    assert elsewhere.device.type == "meta"
    with pytest.raises(PartCLIPSegError) as info:
        segment_parts(image, PARTS, model=elsewhere, device="cpu")
    message = str(info.value)
    assert "device='cpu'" in message and "meta" in message and "\n" not in message
    assert elsewhere.device.type == "meta" and not elsewhere._images  # nothing was set or moved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segment_parts_on_cuda(builtin, image):
    with pytest.raises(PartCLIPSegError, match="Predictor passed as model is on cpu"):
        segment_parts(image, PARTS, model=builtin, device="cuda")
    on_gpu = segment_parts(image, PARTS, device="cuda")
    assert [d["label"] for d in on_gpu]


def _meta_copy(predictor: Predictor):
    import copy

    return copy.deepcopy(predictor.model).to("meta")


# ---------------------------------------------------------------------------- grayscale stacks
@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_ambiguous_grayscale_stack_says_how_to_pass_it(n, kind, builtin):
    rng = np.random.default_rng(n)
    stack = rng.integers(0, 256, (n, 24, 30), dtype=np.uint8)
    array = stack if kind == "numpy" else torch.from_numpy(stack)
    with pytest.raises(PartCLIPSegError) as info:
        builtin.predict_batch(array, PARTS)
    message = str(info.value)
    assert "\n" not in message and "takes a list of images" in message
    assert "ambiguous" in message and f"N = {n} grayscale" in message and "first axis is 1, 3 or 4" in message
    assert "list of 2-D arrays" in message and "images[..., None]" in message
    # both ways the message gives work, and agree
    by_list = builtin.predict_batch(list(array), PARTS)
    by_channel = builtin.predict_batch(array[..., None], PARTS)
    assert len(by_list) == len(by_channel) == n
    for a, b in zip(by_list, by_channel):
        assert a.part_labels.shape == (24, 30)
        np.testing.assert_array_equal(a.part_labels, b.part_labels)


def test_narrow_grayscale_stack_names_its_width(builtin):
    stack = np.zeros((5, 24, 3), dtype=np.uint8)  # 5 images 3 pixels wide, or one 5 x 24 RGB image
    with pytest.raises(PartCLIPSegError) as info:
        builtin.predict_batch(stack, PARTS)
    message = str(info.value)
    assert "H x W x 3 image" in message and "5 grayscale images 3 pixels wide" in message
    assert "list of 2-D arrays" in message and "\n" not in message
    assert len(builtin.predict_batch(stack[..., None], PARTS)) == 5


def test_unambiguous_grayscale_stack_is_still_a_batch(builtin):
    stack = np.random.default_rng(0).integers(0, 256, (2, 24, 30), dtype=np.uint8)
    assert len(builtin.predict_batch(stack, PARTS)) == 2
