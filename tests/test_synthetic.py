"""The synthetic demo generator: layout, labels, saliency quality, determinism."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from l2g_core.cli import main
from l2g_core.data.classes import SYNTHETIC_CLASSES
from l2g_core.data.layout import VOCLayout
from l2g_core.data.synthetic import _Canvas, _random_pose, render_image

NUM_CLASSES = len(SYNTHETIC_CLASSES)


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    assert main(["make-synthetic", str(out), "--train", "24", "--val", "8", "--size", "96",
                 "--seed", "3", "--workers", "2"]) == 0
    return out


def test_layout_and_split_lists(dataset):
    layout = VOCLayout(dataset)
    train, val = layout.ids("train"), layout.ids("val")
    assert len(train) == 24 and len(val) == 8 and not set(train) & set(val)
    for image_id in train + val:
        image = layout.load_image(image_id)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert layout.load_mask(image_id).shape == (96, 96)
        assert layout.saliency_path(image_id).is_file()
    assert Image.open(layout.mask_path(train[0])).mode == "P"  # VOC palette PNG


def test_masks_and_labels(dataset):
    layout = VOCLayout(dataset)
    labels = layout.stored_labels()
    for image_id in layout.ids("train") + layout.ids("val"):
        mask = layout.load_mask(image_id)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(NUM_CLASSES + 1)) | {255}
        present = sorted(v for v in values if 1 <= v <= NUM_CLASSES)
        assert labels[image_id] == present  # labels are exactly the classes in the mask
        assert 1 <= len(present) <= 2  # 1 or 2 classes per image
        # 255 only in thin bands on object borders: each ignore pixel has labelled pixels
        # within 2 px, and background touches the band
        ys, xs = np.nonzero(mask == 255)
        assert len(ys) > 0
        padded = np.pad(mask, 2, mode="edge")
        for y, x in zip(ys, xs):
            assert (padded[y:y + 5, x:x + 5] != 255).any()
        assert ((np.roll(mask, 1, axis=0) == 255) & (mask == 0)).any()


def test_every_class_occurs(dataset):
    labels = VOCLayout(dataset).stored_labels()
    seen = {c for present in labels.values() for c in present}
    assert seen == set(range(1, NUM_CLASSES + 1))


def test_saliency_is_informative_but_imperfect(dataset):
    layout = VOCLayout(dataset)
    fg_sal, bg_sal = [], []
    for image_id in layout.ids("train"):
        mask = layout.load_mask(image_id)
        sal = layout.load_saliency(image_id)
        fg_sal.append(sal[(mask > 0) & (mask != 255)])
        bg_sal.append(sal[mask == 0])
    fg, bg = np.concatenate(fg_sal), np.concatenate(bg_sal)
    assert fg.mean() > 4 * bg.mean()  # overlaps the foreground far more than the background
    assert (fg < 0.5).mean() > 0.05  # misses: parts of objects and whole objects
    assert (bg > 0.5).mean() > 0.002  # false positives on distractors and clutter


def test_heads_are_a_minority_of_each_creature_and_some_do_not_show():
    rng = np.random.default_rng(0)
    fractions = []
    for trial in range(60):
        canvas = _Canvas(128, rng)
        canvas.add_creature(1 + trial % NUM_CLASSES, *_random_pose(rng, 128))
        class_index, mask, body = canvas.objects[0]
        fractions.append(1 - body.sum() / mask.sum())
        assert (canvas.label[mask] == class_index).all()  # a turned-away creature is still its class
    shown = [f for f in fractions if f > 0]
    assert all(0.05 < f < 0.4 for f in shown)
    assert 0.15 < 1 - len(shown) / len(fractions) < 0.45  # HEADLESS = 0.3 of them show no head


def test_distractors_carry_no_class_stripes():
    """A creature's body is striped (a class cue), a distractor's only blotchy: on the same pose
    and stream, the body's colours spread far more (version 2's distractors, class bodies, gave
    a ratio of about 1)."""
    rng = np.random.default_rng(1)
    canvas = _Canvas(128, rng)
    pose = (64.0, 64.0, 0.0, 36.0, 24.0)
    canvas.add_distractor(*pose)
    plain = canvas.rgb[canvas.distractors[0]].std(axis=0).mean()
    canvas = _Canvas(128, np.random.default_rng(1))
    canvas.add_creature(4, *pose)  # a bee: its stripes run at 90 degrees
    _, _, body = canvas.objects[0]
    striped = canvas.rgb[body].std(axis=0).mean()
    assert striped > 1.3 * plain


def test_same_seed_same_bytes_any_worker_count(dataset, tmp_path):
    again = tmp_path / "again"
    assert main(["make-synthetic", str(again), "--train", "24", "--val", "8", "--size", "96",
                 "--seed", "3", "--workers", "1"]) == 0
    assert _digest(again) == _digest(dataset)


def test_other_seed_other_images():
    a = render_image(0, "train", 0, 64)[0]
    b = render_image(1, "train", 0, 64)[0]
    assert not np.array_equal(a, b)


def test_provenance_written_last(dataset):
    info = json.loads((dataset / "synthetic.json").read_text())
    assert info["class_names"] == list(SYNTHETIC_CLASSES) and info["seed"] == 3
    assert not list(dataset.rglob("*.tmp"))


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path / "x"), "--train", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train" in err[0]
    assert not (tmp_path / "x").exists()
