"""score-pseudo-labels: the written labels, the no-CRF argmax and the saliency baseline."""

import json

import numpy as np
import pytest
from PIL import Image

from l2g_core.cam_io import cams_to_labels, load_cams, saliency_as_cams
from l2g_core.cli import main
from l2g_core.evaluation import confusion, label_names, scores


from conftest import cams_from_masks, prepare_tiny_dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    manifest = prepare_tiny_dataset(root, train=8)
    layout, ids, _ = cams_from_masks(root, peak=0.8)  # CAMs from the ground truth, blurred by noise
    (root / "cams/miou.json").write_text(json.dumps({"best_threshold": 0.5}))
    return root, manifest, layout, ids


def test_scores_written_labels_no_crf_and_saliency_baseline(prepared):
    root, manifest, layout, ids = prepared
    assert main(["refine", "--manifest", str(manifest), "--cams", str(root / "cams"), "--out", str(root / "labels"),
                 "--threshold-from", str(root / "cams/miou.json"), "--workers", "1"]) == 0
    out = root / "labels/miou.json"
    cam_metrics = root / "cam_metrics.json"
    cam_metrics.write_text(json.dumps({"miou": 0.61, "best_threshold": 0.25, "kind": "cam"}))
    assert main(["score-pseudo-labels", "--manifest", str(manifest), "--labels", str(root / "labels"),
                 "--cams", str(root / "cams"), "--saliency-thresholds", "0.3", "0.5", "0.7", "--out", str(out),
                 "--cam-scores", f"l2g={cam_metrics}"]) == 0
    result = json.loads(out.read_text())
    assert result["cam_scores"] == {"l2g": {"miou": 0.61, "best_threshold": 0.25}}  # carried beside
    assert result["threshold"] == 0.5 and result["num_images"] == len(ids)
    # by hand: the same three numbers with plain loops
    names = label_names(["owl", "fox", "frog", "bee", "fish", "snail"], 7)
    written = sum(confusion(layout.load_mask(i), np.asarray(Image.open(root / f"labels/{i}.png")), 7) for i in ids)
    assert result["miou"] == pytest.approx(scores(written, names)["miou"])
    plain, sal = 0, {t: 0 for t in (0.3, 0.5, 0.7)}
    for i in ids:
        cams, classes = load_cams(root / f"cams/{i}.npz")
        gt = layout.load_mask(i)
        plain = plain + confusion(gt, cams_to_labels(cams, classes, 0.5), 7)
        for t in sal:
            sal[t] = sal[t] + confusion(gt, cams_to_labels(saliency_as_cams(cams, layout.load_saliency(i)), classes, t), 7)
    assert result["miou_no_crf"] == pytest.approx(scores(plain, names)["miou"])
    sweep = {t: scores(m, names)["miou"] for t, m in sal.items()}
    assert result["saliency_baseline"]["miou"] == pytest.approx(max(sweep.values()))
    assert result["saliency_baseline"]["best_threshold"] == max(sweep, key=sweep.get)
    assert result["miou_no_crf"] > 0.8  # near-perfect CAMs give near-perfect labels


def test_saliency_as_cams_keeps_the_cam_class_and_the_saliency_value():
    cams = np.array([[[0.9, 0.1]], [[0.2, 0.7]]], dtype=np.float32)
    out = saliency_as_cams(cams, np.array([[0.4, 0.6]], dtype=np.float32))
    assert out.max(axis=0).tolist() == [[pytest.approx(0.4), pytest.approx(0.6)]]
    assert out.argmax(axis=0).tolist() == [[0, 1]]


def test_missing_pseudo_label_is_a_one_line_error(prepared, tmp_path, capsys):
    root, manifest, _, _ = prepared
    code = main(["score-pseudo-labels", "--manifest", str(manifest), "--labels", str(tmp_path),
                 "--cams", str(root / "cams"), "--out", str(tmp_path / "miou.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and f"{tmp_path / 'manifest.json'}: not found" in err[0]
    assert not (tmp_path / "miou.json").exists()


def test_no_crf_score_uses_the_settings_the_labels_were_made_with(prepared):
    root, manifest, layout, ids = prepared
    labels, out = root / "sal_labels", root / "sal_labels/miou.json"
    assert main(["refine", "--manifest", str(manifest), "--cams", str(root / "cams"), "--out", str(labels),
                 "--background", "saliency", "--ignore-band", "0.2", "0.4", "--no-crf", "--workers", "1"]) == 0
    assert main(["score-pseudo-labels", "--manifest", str(manifest), "--labels", str(labels),
                 "--cams", str(root / "cams"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["background"] == "saliency" and result["ignore_band"] == [0.2, 0.4]
    assert result["miou_no_crf"] == result["miou"]  # written without the CRF: the same labels
    written = [np.asarray(Image.open(labels / f"{i}.png")) for i in ids]
    ignored = sum(((w == 255) & (layout.load_mask(i) != 255)).sum() for w, i in zip(written, ids))
    labelled = sum((layout.load_mask(i) != 255).sum() for i in ids)
    assert result["ignored_fraction"] == pytest.approx(ignored / labelled) and ignored > 0


def test_cam_scores_without_a_miou_are_a_one_line_error(prepared, tmp_path, capsys):
    root, manifest, _, _ = prepared
    assert main(["refine", "--manifest", str(manifest), "--cams", str(root / "cams"), "--out", str(tmp_path / "labels"),
                 "--threshold-from", str(root / "cams/miou.json"), "--workers", "1"]) == 0
    capsys.readouterr()
    code = main(["score-pseudo-labels", "--manifest", str(manifest), "--labels", str(tmp_path / "labels"),
                 "--cams", str(root / "cams"), "--out", str(tmp_path / "miou.json"),
                 "--cam-scores", f"cams={root / 'cams/miou.json'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no miou or best_threshold" in err[0]
    assert not (tmp_path / "miou.json").exists()
