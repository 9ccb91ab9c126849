"""Metrics: confusion matrices, IoU scores, the single-pass threshold sweep and `l2g evaluate`."""

import csv
import json

import numpy as np
import pytest

from l2g_core.cam_io import cams_to_labels, load_cams, save_cams
from l2g_core.cli import main
from l2g_core.evaluation import accumulate, confusion, scores, sweep_confusions
from l2g_core.io_utils import write_label_png

NAMES = ["owl", "fox", "frog"]
LABELS = ["background"] + NAMES


# ---------------------------------------------------------------- confusion and scores

def test_confusion_and_scores_by_hand():
    gt = np.array([[0, 0, 1, 1],
                   [2, 2, 255, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 255],
                     [2, 0, 2, 1]], dtype=np.uint8)
    matrix = confusion(gt, pred, 4)
    assert matrix.dtype == np.int64
    # rows: gt 0..3; columns: prediction 0..3, then "no prediction" (255)
    assert matrix.tolist() == [[1, 1, 0, 0, 0],
                               [0, 2, 0, 0, 1],
                               [1, 0, 1, 0, 0],
                               [0, 0, 0, 0, 0]]
    s = scores(matrix, NAMES)
    assert s["per_class_iou"] == pytest.approx({"background": 1 / 3, "owl": 2 / 4, "fox": 1 / 2, "frog": None})
    assert s["per_class_iou"]["frog"] is None            # absent from gt and prediction
    assert s["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert s["precision"] == pytest.approx({"background": 1 / 2, "owl": 2 / 3, "fox": 1.0, "frog": None})
    assert s["recall"] == pytest.approx({"background": 1 / 2, "owl": 2 / 3, "fox": 1 / 2, "frog": None})
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["num_pixels"] == 7
    assert scores(matrix, LABELS) == s                   # names with or without background


def test_confusion_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="prediction value 7"):
        confusion(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8), 4)
    with pytest.raises(ValueError, match="prediction value 4"):  # not mistaken for "no prediction"
        confusion(np.zeros((2, 2), np.uint8), np.full((2, 2), 4, np.uint8), 4)
    with pytest.raises(ValueError, match="ground truth value 9"):
        confusion(np.full((2, 2), 9, np.uint8), np.zeros((2, 2), np.uint8), 4)
    # values under ignored ground truth are not checked, nor counted
    assert confusion(np.full((2, 2), 255, np.uint8), np.full((2, 2), 7, np.uint8), 4).sum() == 0


def test_scores_of_nothing():
    s = scores(np.zeros((4, 5), np.int64), NAMES)
    assert s["miou"] is None and s["pixel_accuracy"] is None and s["num_pixels"] == 0


# ---------------------------------------------------------------- single-pass sweep

def loop_confusions(cams, classes, gt, thresholds, num_labels):
    return np.stack([confusion(gt, cams_to_labels(cams, classes, t), num_labels) for t in thresholds])


@pytest.mark.parametrize("seed", range(6))
def test_sweep_equals_threshold_loop(seed):
    rng = np.random.default_rng(seed)
    num_labels = 6
    thresholds = [0.3, 0.05, 0.1, 0.25, 0.5, 0.1, 0.0, 0.6, 0.45, 1.0, 0.2, 0.35, 0.15]  # unsorted, repeated
    # values on a coarse grid that holds every threshold (as float32): ties with thresholds and
    # between classes; plus float16-rounded values as a CAM file stores them
    grid = np.array(sorted(set(thresholds)) + [0.7, 0.9], dtype=np.float32)
    for _ in range(5):
        k = int(rng.integers(0, 4))
        classes = np.sort(rng.choice(np.arange(1, num_labels), size=k, replace=False))
        shape = tuple(rng.integers(1, 9, size=2))
        cams = rng.choice(grid, size=(k, *shape)).astype(np.float32)
        if rng.random() < 0.5:
            cams = cams.astype(np.float16).astype(np.float32)
        gt = rng.integers(0, num_labels, size=shape).astype(np.uint8)
        gt[rng.random(shape) < 0.2] = 255
        for ts in (thresholds, [np.float64(t) for t in thresholds], [0.25]):
            expected = loop_confusions(cams, classes, gt, ts, num_labels)
            np.testing.assert_array_equal(sweep_confusions(cams, classes, gt, ts, num_labels), expected)


def test_sweep_on_random_continuous_maps():
    rng = np.random.default_rng(42)
    thresholds = list(np.round(np.linspace(0, 1, 41), 3))
    cams = rng.random((3, 20, 30)).astype(np.float16).astype(np.float32)
    classes = np.array([2, 5, 20])
    gt = rng.integers(0, 21, size=(20, 30)).astype(np.uint8)
    np.testing.assert_array_equal(sweep_confusions(cams, classes, gt, thresholds, 21),
                                  loop_confusions(cams, classes, gt, thresholds, 21))


def test_sweep_with_no_classes_is_all_background():
    gt = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    sweep = sweep_confusions(np.zeros((0, 2, 2), np.float32), np.zeros(0, np.int64), gt, [0.1, 0.2], 3)
    assert sweep.shape == (2, 3, 4)
    for matrix in sweep:
        assert matrix.tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]


def test_accumulate_sums_in_threads_and_propagates_errors():
    total = accumulate(lambda i: np.full((2, 3), i, np.int64), list(range(50)), workers=3)
    assert total.tolist() == [[sum(range(50))] * 3] * 2
    assert accumulate(lambda i: np.zeros(1), [], workers=2) is None

    def failing(i):
        if i == 7:
            raise ValueError("bad image 7")
        return np.ones(1, np.int64)

    with pytest.raises(ValueError, match="bad image 7"):
        accumulate(failing, list(range(20)), workers=2)


# ---------------------------------------------------------------- `l2g evaluate`

GT = {"a": np.array([[1, 1], [0, 0]], np.uint8), "b": np.array([[2, 255]], np.uint8)}


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    for image_id, mask in GT.items():
        write_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
    (tmp_path / "val.txt").write_text("a\nb\n")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "name": "demo", "root": str(root), "class_names": NAMES, "num_classes": len(NAMES),
        "splits": {"val": {"list": str(tmp_path / "val.txt")}}}))
    return manifest


def evaluate(manifest, pred, out, *extra):
    return main(["evaluate", "--manifest", str(manifest), "--split", "val", "--pred", str(pred),
                 "--out", str(out), "--workers", "2", *extra])


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_perfect_png_predictions(dataset, tmp_path, capsys):
    for image_id, mask in GT.items():
        write_label_png(tmp_path / "pred" / f"{image_id}.png", mask)
    out = tmp_path / "metrics" / "miou.json"
    assert evaluate(dataset, tmp_path / "pred", out) == 0
    metrics = json.loads(out.read_text())
    assert metrics["kind"] == "png" and metrics["split"] == "val" and metrics["num_images"] == 2
    assert metrics["miou"] == 1.0
    assert metrics["per_class_iou"] == {"background": 1.0, "owl": 1.0, "fox": 1.0, "frog": None}
    assert metrics["class_names"] == LABELS
    assert "sweep" not in metrics and "best_threshold" not in metrics
    assert "mIoU 1.0000" in capsys.readouterr().out


def test_wrong_png_predictions_by_hand(dataset, tmp_path):
    write_label_png(tmp_path / "pred" / "a.png", np.array([[1, 1], [1, 0]], np.uint8))
    write_label_png(tmp_path / "pred" / "b.png", np.array([[0, 2]], np.uint8))
    out = tmp_path / "miou.json"
    for _ in range(2):  # rewritten, never appended
        assert evaluate(dataset, tmp_path / "pred", out) == 0
        metrics = json.loads(out.read_text())
    # confusion: gt0 -> 0: 1, 1: 1;  gt1 -> 1: 2;  gt2 -> 0: 1;  (b's ignored pixel skipped)
    assert metrics["per_class_iou"] == pytest.approx({"background": 1 / 3, "owl": 2 / 3, "fox": 0.0, "frog": None})
    assert metrics["miou"] == pytest.approx(1 / 3)
    assert metrics["precision"] == pytest.approx({"background": 1 / 2, "owl": 2 / 3, "fox": None, "frog": None})
    assert metrics["recall"] == pytest.approx({"background": 1 / 2, "owl": 1.0, "fox": 0.0, "frog": None})
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 5)
    assert list(metrics) == ["kind", "split", "num_images", "num_pixels", "miou", "per_class_iou", "precision",
                             "recall", "pixel_accuracy", "class_names", "expectations"]
    assert metrics["expectations"] == []  # none declared
    rows = read_csv(tmp_path / "miou.csv")
    assert rows[0] == ["class", "iou", "precision", "recall"]
    assert rows[1:] == [["background", "0.333333", "0.500000", "0.500000"],
                        ["owl", "0.666667", "0.666667", "1.000000"],
                        ["fox", "0.000000", "", "0.000000"],
                        ["frog", "", "", ""]]
    assert not (tmp_path / "miou_sweep.csv").exists()


def write_cams(folder):
    save_cams(folder / "a.npz", [[[0.9, 0.3], [0.2, 0.05]]], [1])
    save_cams(folder / "b.npz", [[[0.4, 0.7]], [[0.6, 0.1]]], [2, 3])


def test_cam_sweep(dataset, tmp_path, capsys):
    write_cams(tmp_path / "cams")
    out = tmp_path / "cam_miou.json"
    thresholds = [0.1, 0.25, 0.35, 0.5, 0.65]
    assert evaluate(dataset, tmp_path / "cams", out, "--thresholds", *map(str, thresholds)) == 0
    metrics = json.loads(out.read_text())
    assert metrics["kind"] == "cam"
    assert [s["threshold"] for s in metrics["sweep"]] == thresholds
    expected = []
    for t in thresholds:  # the slow way: label maps per threshold
        total = sum(confusion(GT[i], cams_to_labels(*load_cams(tmp_path / "cams" / f"{i}.npz"), t), 4) for i in GT)
        expected.append(scores(total, NAMES)["miou"])
    assert [s["miou"] for s in metrics["sweep"]] == pytest.approx(expected)
    best = max(metrics["sweep"], key=lambda s: s["miou"])
    assert metrics["best_threshold"] == best["threshold"] == 0.25
    assert metrics["miou"] == pytest.approx(best["miou"])
    # at 0.25: a -> [[1,1],[0,0]] (perfect), b -> [[3,2]]: gt2 -> 3 (ignored pixel skipped)
    assert metrics["per_class_iou"] == pytest.approx({"background": 1.0, "owl": 1.0, "fox": 0.0, "frog": 0.0})
    assert read_csv(tmp_path / "cam_miou_sweep.csv") == [["threshold", "miou"]] + [
        [f"{t:.6f}", f"{m:.6f}"] for t, m in zip(thresholds, expected)]
    assert len(read_csv(tmp_path / "cam_miou.csv")) == 5
    assert "at threshold 0.25" in capsys.readouterr().out


def test_cam_fixed_threshold_and_default_sweep(dataset, tmp_path):
    write_cams(tmp_path / "cams")
    out = tmp_path / "m.json"
    assert evaluate(dataset, tmp_path / "cams", out, "--kind", "cam", "--threshold", "0.5") == 0
    metrics = json.loads(out.read_text())
    assert metrics["best_threshold"] == 0.5 and [s["threshold"] for s in metrics["sweep"]] == [0.5]
    assert evaluate(dataset, tmp_path / "cams", out) == 0
    assert [s["threshold"] for s in json.loads(out.read_text())["sweep"]] == [
        0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


@pytest.mark.parametrize("thresholds, edge", [((0.1, 0.25, 0.35), None), ((0.25, 0.35, 0.5), "low"),
                                              ((0.05, 0.1, 0.25), "high")])
def test_a_best_threshold_at_an_end_of_the_sweep_is_flagged(dataset, tmp_path, capsys, thresholds, edge):
    write_cams(tmp_path / "cams")  # best at 0.25 of a sweep that holds it inside
    out = tmp_path / "m.json"
    assert evaluate(dataset, tmp_path / "cams", out, "--thresholds", *map(str, thresholds)) == 0
    metrics = json.loads(out.read_text())
    assert metrics["best_at_edge"] == edge
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warning) == (edge is not None)
    if edge:
        assert f"the {edge} end of the sweep" in warning[0] and "widen --thresholds" in warning[0]


def one_error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l2g evaluate: error: ")
    return lines[0]


def test_missing_prediction_is_one_line(dataset, tmp_path, capsys):
    write_label_png(tmp_path / "pred" / "a.png", GT["a"])
    out = tmp_path / "miou.json"
    assert evaluate(dataset, tmp_path / "pred", out) == 1
    line = one_error_line(capsys)
    assert str(tmp_path / "pred" / "b.png") in line and "1 of 2" in line
    assert not out.exists() and not (tmp_path / "miou.csv").exists()


def test_size_mismatch_is_one_line(dataset, tmp_path, capsys):
    write_label_png(tmp_path / "pred" / "a.png", GT["a"])
    write_label_png(tmp_path / "pred" / "b.png", np.zeros((2, 2), np.uint8))
    out = tmp_path / "miou.json"
    assert evaluate(dataset, tmp_path / "pred", out) == 1
    line = one_error_line(capsys)
    assert str(tmp_path / "pred" / "b.png") in line and "2x2" in line
    assert not out.exists()


def test_cam_size_mismatch_is_one_line(dataset, tmp_path, capsys):
    write_cams(tmp_path / "cams")
    save_cams(tmp_path / "cams" / "a.npz", np.zeros((1, 3, 3)), [1])
    assert evaluate(dataset, tmp_path / "cams", tmp_path / "m.json") == 1
    assert str(tmp_path / "cams" / "a.npz") in one_error_line(capsys)
    assert not (tmp_path / "m.json").exists()


def test_threshold_with_png_predictions_is_refused(dataset, tmp_path, capsys):
    for image_id, mask in GT.items():
        write_label_png(tmp_path / "pred" / f"{image_id}.png", mask)
    assert evaluate(dataset, tmp_path / "pred", tmp_path / "m.json", "--threshold", "0.3") == 1
    assert "CAM predictions only" in one_error_line(capsys)
