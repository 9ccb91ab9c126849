"""CRF refinement: the pure functions on a synthetic image, and `l2g refine` end to end."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from l2g_core.cam_io import cam_path, cams_to_labels, load_cams, save_cams
from l2g_core.cli import main
from l2g_core.crf import DEFAULT_CRF_PARAMS, cam_scores, dense_crf, fill_band, refine_labels, scores_to_probs
from l2g_core.data.layout import VOCLayout

CLASSES = [1, 2]
COLOURS = np.array([[40, 90, 200], [220, 60, 40], [60, 200, 80]], dtype=np.uint8)


def synthetic(height=48, width=48, seed=0):
    """Image with sharp edges (background, a right-hand region of class 1, a square of class 2),
    its true labels, and blurred, noisy CAM-like maps of the two classes."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), dtype=np.uint8)
    truth[:, width * 7 // 12:] = 1
    truth[height * 3 // 10:height * 5 // 8, width // 8:width * 5 // 12] = 2
    image = COLOURS[truth].astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    cams = []
    for c in CLASSES:
        cam = gaussian_filter((truth == c).astype(np.float32), 4) + rng.normal(0, 0.2, (height, width))
        cam = np.clip(cam, 0, None)
        cams.append(cam / cam.max())
    cams = np.stack(cams).astype(np.float16).astype(np.float32)  # as stored in a CAM file
    return image, truth, cams


def test_crf_sharpens_a_noisy_labelling():
    image, truth, cams = synthetic()
    plain = cams_to_labels(cams, CLASSES, 0.3)
    refined = refine_labels(image, cams, CLASSES, threshold=0.3)
    plain_acc, crf_acc = (plain == truth).mean(), (refined == truth).mean()
    assert plain_acc < 0.93
    assert crf_acc > 0.97 and crf_acc > plain_acc + 0.05
    assert refined.dtype == np.uint8 and set(np.unique(refined)) <= {0, 1, 2}


def test_dense_crf_returns_marginals():
    image, _, cams = synthetic(20, 24)
    scores, channel_labels = cam_scores(cams, CLASSES, 0.3)
    assert scores.shape == (3, 20, 24) and channel_labels.tolist() == [0, 1, 2]
    assert np.all(scores[0] == np.float32(0.3))
    probs = scores_to_probs(scores)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    q = dense_crf(image, probs, iterations=5, pos_w=3, pos_xy_std=3, bi_w=10, bi_xy_std=50, bi_rgb_std=5)
    assert q.shape == (3, 20, 24)
    np.testing.assert_allclose(q.sum(axis=0), 1.0, rtol=1e-4)


def test_probabilities_keep_the_plain_argmax():
    """Without pairwise terms the CRF gives back the plain L2G labelling: normalising the score
    vector per pixel keeps its argmax."""
    image, _, _ = synthetic(16, 20)
    rng = np.random.default_rng(1)
    cams = rng.random((2, 16, 20)).astype(np.float32)
    no_pairwise = {"pos_w": 0.0, "bi_w": 0.0}
    for threshold in (0.2, 0.5, 0.8):
        got = refine_labels(image, cams, CLASSES, threshold=threshold, crf_params=no_pairwise)
        np.testing.assert_array_equal(got, cams_to_labels(cams, CLASSES, threshold))


def test_without_crf_is_exactly_cams_to_labels():
    image, _, cams = synthetic(20, 24)
    cams[:, 0, :4] = 0.5  # ties between classes and with the threshold
    for threshold in (0.0, 0.25, 0.5, 1.0):
        got = refine_labels(image, cams, CLASSES, threshold=threshold, use_crf=False)
        np.testing.assert_array_equal(got, cams_to_labels(cams, CLASSES, threshold))
    empty = np.zeros((0, 20, 24), dtype=np.float32)
    for use_crf in (True, False):
        labels = refine_labels(image, empty, [], threshold=0.3, use_crf=use_crf)
        assert labels.shape == (20, 24) and not labels.any()


@pytest.mark.parametrize("use_crf", [True, False])
def test_ignore_band_marks_only_disagreements(use_crf):
    image, _, cams = synthetic(32, 32)
    low = refine_labels(image, cams, CLASSES, threshold=0.15, use_crf=use_crf)
    high = refine_labels(image, cams, CLASSES, threshold=0.6, use_crf=use_crf)
    band = refine_labels(image, cams, CLASSES, ignore_band=(0.15, 0.6), use_crf=use_crf)
    disagree = low != high
    assert 0 < disagree.sum() < disagree.size
    np.testing.assert_array_equal(band == 255, disagree)
    np.testing.assert_array_equal(band[~disagree], low[~disagree])


def test_the_crf_fills_an_ignore_band_along_the_image_edges():
    image, truth, _ = synthetic()
    seeds = truth.copy()
    seeds[:, 20:34] = 255  # a band across the edge between the background and class 1 is unknown
    seeds[16:24, 8:16] = 255  # so is a patch inside the class-2 square
    filled = fill_band(image, seeds, CLASSES, DEFAULT_CRF_PARAMS)
    assert (filled == 255).sum() == 0
    unknown = seeds == 255
    assert (filled[unknown] == truth[unknown]).mean() > 0.97  # the colour edges decide, not distance
    assert (filled[~unknown] == truth[~unknown]).mean() > 0.99


def test_fill_labels_the_band_of_the_no_crf_labelling_only_where_it_was_unsure():
    image, truth, cams = synthetic(32, 32)
    band = refine_labels(image, cams, CLASSES, ignore_band=(0.15, 0.6), use_crf=False)
    filled = refine_labels(image, cams, CLASSES, ignore_band=(0.15, 0.6), fill=True)
    np.testing.assert_array_equal(filled, fill_band(image, band, CLASSES, DEFAULT_CRF_PARAMS))
    unsure = band == 255
    assert unsure.any() and not (filled == 255).any()
    assert (filled[unsure] == truth[unsure]).mean() > 0.9
    with pytest.raises(ValueError, match="needs an ignore band"):
        refine_labels(image, cams, CLASSES, threshold=0.3, fill=True)


# --- the stage, end to end --------------------------------------------------------------------

IDS = ["img_a", "img_b", "img_c", "img_d", "img_e"]
HEIGHT, WIDTH = 18, 26  # not square, so a transposed label map shows


@pytest.fixture
def dataset(tmp_path):
    """A VOC-layout folder with five images, their CAM files and a hand-written manifest."""
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    cams_dir = tmp_path / "cams"
    for n, image_id in enumerate(IDS):
        image, _, cams = synthetic(HEIGHT, WIDTH, seed=n)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        keep = [0, 1] if n % 2 == 0 else [1]  # some images hold one class only
        save_cams(cam_path(cams_dir, image_id), cams[keep], np.array(CLASSES)[keep])
    (tmp_path / "train.txt").write_text("\n".join(IDS) + "\n")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "name": "tiny", "root": str(root), "class_names": ["one", "two"], "num_classes": 2,
        "splits": {"train": {"list": str(tmp_path / "train.txt")}},
    }))
    return {"tmp": tmp_path, "root": root, "cams": cams_dir, "manifest": manifest}


def refine(dataset, out, *extra):
    return main(["refine", "--manifest", str(dataset["manifest"]), "--split", "train",
                 "--cams", str(dataset["cams"]), "--out", str(out), *extra])


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def expected_labels(dataset, image_id, **options):
    image = VOCLayout(dataset["root"]).load_image(image_id)
    cams, classes = load_cams(cam_path(dataset["cams"], image_id))
    return refine_labels(image, cams, classes, **options)


def test_stage_writes_palette_labels_and_manifest_last(dataset):
    out = dataset["tmp"] / "labels"
    assert refine(dataset, out, "--threshold", "0.3", "--workers", "1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["files"]) == [f"{i}.png" for i in IDS] and manifest["ids"] == IDS
    for image_id in IDS:
        path = out / f"{image_id}.png"
        assert manifest["files"][path.name] == path.stat().st_size
        with Image.open(path) as png:
            assert png.mode == "P" and png.size == (WIDTH, HEIGHT)
            labels = np.asarray(png)
        np.testing.assert_array_equal(labels, expected_labels(dataset, image_id, threshold=0.3))
    assert manifest["settings"]["threshold"] == 0.3 and manifest["settings"]["crf"] is True
    assert manifest["settings"]["crf_params"]["iterations"] == 10
    assert manifest["shard"] is None and manifest["num_images"] == len(IDS)
    assert not list(out.glob(".*.tmp"))


def test_stage_without_crf_and_with_ignore_band(dataset):
    plain, band = dataset["tmp"] / "plain", dataset["tmp"] / "band"
    assert refine(dataset, plain, "--threshold", "0.4", "--no-crf", "--workers", "1") == 0
    assert refine(dataset, band, "--ignore-band", "0.2", "0.6", "--workers", "1") == 0
    for image_id in IDS:
        cams, classes = load_cams(cam_path(dataset["cams"], image_id))
        got = np.asarray(Image.open(plain / f"{image_id}.png"))
        np.testing.assert_array_equal(got, cams_to_labels(cams, classes, 0.4))
        got = np.asarray(Image.open(band / f"{image_id}.png"))
        np.testing.assert_array_equal(got, expected_labels(dataset, image_id, ignore_band=(0.2, 0.6)))
    assert json.loads((band / "manifest.json").read_text())["settings"]["ignore_band"] == [0.2, 0.6]


def test_stage_fills_the_band(dataset, capsys):
    filled = dataset["tmp"] / "filled"
    assert refine(dataset, filled, "--ignore-band", "0.2", "0.6", "--fill-band", "--workers", "1") == 0
    for image_id in IDS:
        got = np.asarray(Image.open(filled / f"{image_id}.png"))
        np.testing.assert_array_equal(got, expected_labels(dataset, image_id, ignore_band=(0.2, 0.6), fill=True))
    assert json.loads((filled / "manifest.json").read_text())["settings"]["fill_band"] is True
    capsys.readouterr()
    assert refine(dataset, dataset["tmp"] / "x", "--threshold", "0.3", "--fill-band") == 1
    assert refine(dataset, dataset["tmp"] / "x", "--ignore-band", "0.2", "0.6", "--fill-band", "--no-crf") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("--fill-band needs --ignore-band and the CRF" in line for line in err)
    assert not (dataset["tmp"] / "x").exists()


def test_threshold_from_metrics(dataset):
    metrics = dataset["tmp"] / "metrics.json"
    metrics.write_text(json.dumps({"miou": 0.5, "best_threshold": 0.45}))
    by_file, by_value = dataset["tmp"] / "by_file", dataset["tmp"] / "by_value"
    assert refine(dataset, by_file, "--threshold-from", str(metrics), "--workers", "1") == 0
    assert refine(dataset, by_value, "--threshold", "0.45", "--workers", "1") == 0
    assert pngs(by_file) == pngs(by_value)
    settings = json.loads((by_file / "manifest.json").read_text())["settings"]
    assert settings["threshold"] == 0.45 and settings["threshold_from"] == str(metrics.resolve())


def test_shards_together_equal_the_full_run(dataset):
    full, sharded = dataset["tmp"] / "full", dataset["tmp"] / "sharded"
    assert refine(dataset, full, "--threshold", "0.3", "--workers", "2") == 0  # a process pool
    assert refine(dataset, sharded, "--threshold", "0.3", "--workers", "1", "--shard", "1/2") == 0
    first = json.loads((sharded / "manifest-shard-1-of-2.json").read_text())
    assert list(first["files"]) == [f"{i}.png" for i in IDS[0::2]]
    assert not (sharded / "manifest.json").exists()
    assert refine(dataset, sharded, "--threshold", "0.3", "--workers", "1", "--shard", "2/2") == 0
    second = json.loads((sharded / "manifest-shard-2-of-2.json").read_text())
    assert list(second["files"]) == [f"{i}.png" for i in IDS[1::2]]
    assert first["shard"] == "1/2" and second["shard"] == "2/2"
    assert pngs(sharded) == pngs(full) and len(pngs(full)) == len(IDS)


def test_missing_cam_file_is_one_line_and_writes_nothing(dataset, capsys):
    missing = cam_path(dataset["cams"], "img_c")
    missing.unlink()
    out = dataset["tmp"] / "labels"
    assert refine(dataset, out, "--threshold", "0.3", "--workers", "1") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"l2g refine: error: {missing}: CAM file not found"]
    assert not out.exists()


def test_bad_settings_are_one_line(dataset, capsys):
    assert refine(dataset, dataset["tmp"] / "x", "--threshold", "1.5") == 1
    assert refine(dataset, dataset["tmp"] / "x", "--threshold-from", str(dataset["tmp"] / "none.json")) == 1
    assert refine(dataset, dataset["tmp"] / "x", "--threshold", "0.3", "--shard", "3/2") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "outside [0, 1]" in err[0] and "metrics file not found" in err[1]
    assert "--shard 3/2" in err[2]
    assert not (dataset["tmp"] / "x").exists()


def test_saliency_background_with_an_ignore_band():
    # pixels: salient owl | salient, CAM says fox | undecided saliency | missed by saliency, strong CAM | empty
    cams = np.array([[[0.9, 0.2, 0.1, 0.8, 0.1]],
                     [[0.1, 0.6, 0.1, 0.1, 0.0]]], dtype=np.float32)
    saliency = np.array([[0.9, 0.7, 0.3, 0.05, 0.1]], dtype=np.float32)
    labels = refine_labels(None, cams, [1, 2], ignore_band=(0.2, 0.4), saliency=saliency, use_crf=False)
    # foreground where saliency > 0.4 (class from the CAM); background only where saliency and
    # CAM both stay <= 0.2; a CAM-sure object the detector missed is ignored, not background
    assert labels.tolist() == [[1, 2, 255, 255, 0]]
    at_threshold = refine_labels(None, cams, [1, 2], threshold=0.5, saliency=saliency, use_crf=False)
    assert at_threshold.tolist() == [[1, 2, 0, 0, 0]]  # the saliency baseline's labelling


def test_a_band_of_zero_width_ignores_only_what_the_cam_sees_and_the_saliency_misses():
    # the demo's [0.3, 0.3]: salient owl | saliency just under 0.3, weak CAM | saliency 0.35, CAM says fox |
    # missed by saliency, strong CAM | empty
    cams = np.array([[[0.9, 0.1, 0.2, 0.8, 0.1]],
                     [[0.1, 0.2, 0.6, 0.1, 0.0]]], dtype=np.float32)
    saliency = np.array([[0.9, 0.28, 0.35, 0.05, 0.1]], dtype=np.float32)
    labels = refine_labels(None, cams, [1, 2], ignore_band=(0.3, 0.3), saliency=saliency, use_crf=False)
    assert labels.tolist() == [[1, 0, 2, 255, 0]]
