"""Copy-paste augmentation (``copy_paste_prob``, not official): the pasted object, its labels, and that every
draw stays a function of the sample's position."""
from __future__ import annotations

import json
import re
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


def _dataset(root: Path, prob: float, *overrides: str) -> TrainDataset:
    config = load_recipe("toy_world", [f"root={root}", f"copy_paste_prob={prob}", "cache_resized=false", "iterations=10",
                                       *overrides])
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
    # a tall donor is limited by the height (90% of it), not the drawn width
    tall_image = np.zeros((90, 20, 3), np.uint8)
    tall_obj = np.full((90, 20), IGNORE, np.int64)
    tall_obj[:, 5:15] = 2
    for _ in range(5):
        new_obj = paste_object(image, part, obj, tall_image, tall_obj.copy(), tall_obj, rng)[2]
        ys, xs = np.nonzero(new_obj == 2)
        assert ys.max() - ys.min() + 1 == round(0.9 * 60) and xs.max() - xs.min() + 1 == round(10 * 54 / 90)
    # a donor without any object label leaves the sample as it was
    empty = np.full((40, 40), IGNORE, np.int64)
    same = paste_object(image, part, obj, donor_image, donor_part, empty, rng)
    assert all(a is b for a, b in zip(same, (image, part, obj)))


def test_copy_paste_changes_only_pixels_it_labels_and_keeps_the_flips(toy_root: Path):
    plain, pasted = _dataset(toy_root, 0.0), _dataset(toy_root, 1.0)
    n, seed = len(plain), plain.config.seed
    changed = 0
    for position in range(8):
        item = (position, record_at(seed, n, position))
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
        donor = plain._load(record_at(seed, n, position ^ 1))
        assert set(np.unique(obj1[differs])) <= set(np.unique(donor[2]))
    assert changed >= 6  # with probability 1 (almost) every sample gets an object


def test_copy_paste_samples_are_a_function_of_the_position(toy_root: Path):
    sampler = StepSampler(10, 4, seed=_dataset(toy_root, 0.5).config.seed, start=0, iterations=3)
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
    dataset, fresh = _dataset(toy_root, 0.5), _dataset(toy_root, 0.5)
    seed = dataset.config.seed
    assert dataset.config.augmentation == "flip" and not dataset.config.crop_size and not dataset.config.color_aug

    def draw(position, stream):  # the flip is the augmentation's first draw; the paste's, its own stream 11
        return np.random.default_rng([seed, position, *stream]).random()
    k = next(k for k in range(100) if draw(2 * k, [11]) >= 0.5 and draw(2 * k, []) >= dataset.config.flip_prob
             and draw(2 * k + 1, [11]) < 0.5)
    first, second = (2 * k, record_at(seed, 10, 2 * k)), (2 * k + 1, record_at(seed, 10, 2 * k + 1))
    sample = dataset[first]
    sample.part_labels.fill_(3)
    sample.object_labels.fill_(3)
    np.asarray(sample.pixel_values)[:] = 0
    expected = _arrays(fresh[second])
    assert (expected[2] != _arrays(_dataset(toy_root, 0.0)[second])[2]).any()  # 2k+1 did get an object
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(dataset[second]), expected))


def test_paper_supervision_keeps_a_seen_part_label_and_skips_unseen_donors(toy_root: Path):
    overrides = ("supervision=parts", "skip_unseen_images=true")
    plain, pasted = _dataset(toy_root, 0.0, *overrides), _dataset(toy_root, 1.0, *overrides)
    seed, n = plain.config.seed, len(plain)
    unchanged = 0
    for position in range(10):
        item = (position, record_at(seed, n, position))
        before, after = _arrays(plain[item]), _arrays(pasted[item])
        assert (after[1] != IGNORE).any()  # a seen part label is always left
        donor = plain._load(record_at(seed, n, position ^ 1))
        if donor is None:  # the partner shows an unseen object: skipped, nothing pasted
            assert all(np.array_equal(a, b) for a, b in zip(before, after))
            unchanged += 1
    assert unchanged >= 1  # seed 3's ten images hold cows or buses


def test_a_paste_that_covers_every_seen_part_label_is_dropped(toy_root: Path, monkeypatch):
    import partclipseg.train.data as train_data

    def covering(image, part, obj, *donor_and_rng):  # a donor object over the whole image
        return image // 2, np.full_like(part, IGNORE), np.full_like(obj, 0)
    monkeypatch.setattr(train_data, "paste_object", covering)
    for supervision, kept in (("parts", True), ("parts+objects", False)):
        overrides = (f"supervision={supervision}", f"skip_unseen_images={supervision == 'parts'}")
        plain, pasted = _dataset(toy_root, 0.0, *overrides), _dataset(toy_root, 1.0, *overrides)
        seed = plain.config.seed
        pastes = 0
        for position in range(6):
            item = (position, record_at(seed, len(plain), position))
            if plain._load(record_at(seed, len(plain), position ^ 1)) is None:
                continue  # no donor: nothing to paste either way
            pastes += 1
            before, after = _arrays(plain[item]), _arrays(pasted[item])
            assert all(np.array_equal(a, b) for a, b in zip(before, after)) == kept
        assert pastes >= 2


def test_a_one_image_dataset_pastes_nothing(tmp_path: Path):
    root = generate_toy_world(tmp_path / "one", n_train=1, n_val=0, size_range=(96, 128), seed=5)
    plain, pasted = _dataset(root, 0.0), _dataset(root, 1.0)
    for position in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(_arrays(plain[(position, 0)]), _arrays(pasted[(position, 0)])))


def test_a_run_started_before_a_key_existed_resumes(tmp_path: Path):
    from partclipseg.train.checkpoint import check_resume_config
    from partclipseg.train.recipe import TrainConfig

    config = load_recipe("toy_world", ["root=/data", "copy_paste_prob=0", "loss.object_ce_lambda=0"])
    saved = config.to_dict()
    del saved["copy_paste_prob"], saved["loss"]["object_ce_lambda"]  # a run of an older version
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_resume_config(tmp_path, config.to_dict(), 0, False, defaults=TrainConfig().to_dict()) == {}
    # a value other than the default is still a change, and without defaults the missing key is listed
    for changed, defaults, shown in (("copy_paste_prob=0.5", TrainConfig().to_dict(), "copy_paste_prob: 0.0 -> 0.5"),
                                     ("copy_paste_prob=0", None, "copy_paste_prob: None -> 0.0")):
        new = load_recipe("toy_world", ["root=/data", "loss.object_ce_lambda=0", changed]).to_dict()
        with pytest.raises(ConfigError, match=re.escape(shown)):
            check_resume_config(tmp_path, new, 0, False, defaults=defaults)


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "true"])
def test_copy_paste_prob_out_of_range_is_refused(value: str):
    with pytest.raises(ConfigError, match="copy_paste_prob"):
        load_recipe("toy_world", ["root=/data", f"copy_paste_prob={value}"]).validate()
