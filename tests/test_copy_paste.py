"""Copy-paste augmentation (``copy_paste_prob``, not official): the pasted object, its labels, and that every
draw stays a function of the sample's position."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from partclipseg.data import IGNORE
from partclipseg.data.toyworld import generate_toy_world
from partclipseg.errors import ConfigError
from partclipseg.train import load_recipe
from partclipseg.train.data import StepSampler, TrainDataset, paste_object, record_at


class _Identity:
    """A preprocessor that hands the augmented uint8 image through."""

    def sample(self, image):
        return image


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return generate_toy_world(tmp_path_factory.mktemp("toy"), n_train=10, n_val=0, size_range=(96, 160), seed=3)


def _dataset(root: Path, prob: float) -> TrainDataset:
    config = load_recipe("toy_world", [f"root={root}", f"copy_paste_prob={prob}", "iterations=10"])
    return TrainDataset(config, _Identity())


def _arrays(sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(sample.pixel_values), sample.part_labels.numpy(), sample.object_labels.numpy()


def test_paste_object_puts_one_donor_object_in_front_with_its_labels():
    rng = np.random.default_rng(0)
    image = np.full((60, 100, 3), 10, np.uint8)
    part = np.full((60, 100), IGNORE, np.int64)
    obj = np.full((60, 100), IGNORE, np.int64)
    part[:, :50], obj[:, :50] = 1, 0  # the sample's own object on the left half
    donor_image = np.zeros((40, 40, 3), np.uint8)
    donor_part = np.full((40, 40), IGNORE, np.int64)
    donor_obj = np.full((40, 40), IGNORE, np.int64)
    donor_image[10:30, 5:35] = (200, 100, 50)  # object 7: a 20 x 30 box, parts 4 (top) and 5 (bottom)
    donor_obj[10:30, 5:35] = 7
    donor_part[10:20, 5:35], donor_part[20:30, 5:35] = 4, 5
    before = image.copy(), part.copy(), obj.copy()
    for _ in range(20):
        new_image, new_part, new_obj = paste_object(image, part, obj, donor_image, donor_part, donor_obj, rng)
        pasted = new_obj == 7
        ys, xs = np.nonzero(pasted)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert 0.3 * 100 - 1 <= width <= 0.6 * 100 + 1 and height <= 0.9 * 60 + 1
        assert abs(width / height - 1.5) < 0.15  # the box keeps its aspect
        assert pasted.sum() == width * height  # a filled box: exactly the donor object's pixels
        assert (new_image[pasted] == (200, 100, 50)).all() and set(np.unique(new_part[pasted])) == {4, 5}
        # the top rows of the pasted box are part 4, the bottom rows part 5 (labels scaled with the image)
        assert (new_part[ys.min(), xs.min():xs.max() + 1] == 4).all()
        assert (new_part[ys.max(), xs.min():xs.max() + 1] == 5).all()
        # everything else is the sample as it was; the inputs are never written to
        assert (new_image[~pasted] == 10).all() and (new_obj[~pasted] == obj[~pasted]).all()
        assert (new_part[~pasted] == part[~pasted]).all()
        for a, b in zip(before, (image, part, obj)):
            assert np.array_equal(a, b)
    # a donor without any object label leaves the sample as it was
    empty = np.full((40, 40), IGNORE, np.int64)
    same = paste_object(image, part, obj, donor_image, donor_part, empty, rng)
    assert all(a is b for a, b in zip(same, (image, part, obj)))


def test_copy_paste_changes_only_pixels_it_labels_and_keeps_the_flips(toy_root: Path):
    plain, pasted = _dataset(toy_root, 0.0), _dataset(toy_root, 1.0)
    n = len(plain)
    changed = 0
    for position in range(8):
        item = (position, record_at(0, n, position))
        image0, part0, obj0 = _arrays(plain[item])
        image1, part1, obj1 = _arrays(pasted[item])
        assert image1.shape == image0.shape
        differs = (image1 != image0).any(-1) | (part1 != part0) | (obj1 != obj0)
        # the separate generator leaves the flip draw alone: what the paste did not cover is unchanged,
        # and every pixel it covered carries an object label (the pasted object's)
        assert (obj1[differs] != IGNORE).all()
        assert differs.mean() < 0.7
        changed += int(differs.any())
        # the pasted object comes from the record at the partner position (position ^ 1)
        donor = plain._load(record_at(0, n, position ^ 1))
        assert set(np.unique(obj1[differs])) <= set(np.unique(donor[2]))
    assert changed >= 6  # with probability 1 (almost) every sample gets an object


def test_copy_paste_samples_are_a_function_of_the_position(toy_root: Path):
    sampler = StepSampler(10, 4, seed=0, start=0, iterations=3)
    items = [item for step in range(3) for item in sampler.batch_for(step)]
    forward = [_arrays(s) for s in map(_dataset(toy_root, 0.5).__getitem__, items)]
    backward = [_arrays(s) for s in map(_dataset(toy_root, 0.5).__getitem__, items[::-1])][::-1]
    for a, b in zip(forward, backward):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    single = []
    for item in items:  # one fresh dataset per sample: a resumed or split run
        single.append(_arrays(_dataset(toy_root, 0.5)[item]))
    for a, b in zip(forward, single):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_sample_handed_out_never_shares_the_cached_donor(toy_root: Path):
    # a pair (2k, 2k+1) in which 2k is neither pasted on nor flipped (its arrays would be the cached
    # record's own) and 2k+1 gets 2k's object pasted: a consumer writing into the first sample's labels
    # must not change the second
    def draw(position, stream):
        return np.random.default_rng([0, position, *stream]).random()
    k = next(k for k in range(100) if draw(2 * k, [11]) >= 0.5 and draw(2 * k, []) >= 0.5
             and draw(2 * k + 1, [11]) < 0.5)
    first, second = (2 * k, record_at(0, 10, 2 * k)), (2 * k + 1, record_at(0, 10, 2 * k + 1))
    dataset, fresh = _dataset(toy_root, 0.5), _dataset(toy_root, 0.5)
    sample = dataset[first]
    sample.part_labels.fill_(3)
    sample.object_labels.fill_(3)
    np.asarray(sample.pixel_values)[:] = 0
    expected = _arrays(fresh[second])
    assert (expected[2] != _arrays(_dataset(toy_root, 0.0)[second])[2]).any()  # 2k+1 did get an object
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(dataset[second]), expected))


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "true"])
def test_copy_paste_prob_out_of_range_is_refused(value: str):
    with pytest.raises(ConfigError, match="copy_paste_prob"):
        load_recipe("toy_world", ["root=/data", f"copy_paste_prob={value}"]).validate()
