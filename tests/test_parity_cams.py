"""Parity with the official L2G code (PengtaoJiang/L2G at 0ec2504) after training: CAM export
(scales, flips, the mean of the raw CAMs, then ReLU), the pseudo labels of gen_gt.py and the
evaluators (the CAM threshold sweep of evaluate_mthr_voc.py, IOUMetric, deeplab-pytorch's scores).

Each `official_*` function re-creates one piece of the official computation from the file and
lines its docstring names, written anew; each test runs it and our command on the same files.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from l2g_core.cam_io import cam_path, load_cams
from l2g_core.cli import main
from l2g_core.config import resolve_recipes
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import split_ids
from l2g_core.model_io import save_classifier
from l2g_core.models import build_classifier

from conftest import REPO, prepare_tiny_dataset

CONFIG = resolve_recipes(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))  # coco: recipe voc + its own
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # utils/LoadData.py lines 62-63


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny dataset, a (random) classifier with PCM, and its CAMs exported with the voc settings."""
    root = tmp_path_factory.mktemp("cams")
    manifest_path = prepare_tiny_dataset(root, train=6, size=48)
    manifest = json.loads(manifest_path.read_text())
    torch.manual_seed(0)
    model = build_classifier("small", manifest["num_classes"], pcm=True)
    with torch.no_grad():  # a background channel that is sometimes the strongest
        model.fc8.weight.mul_(3)
    model_path = root / "cls.pt"
    save_classifier(model_path, model, stage="cls", class_names=manifest["class_names"], settings={})
    export = CONFIG["voc"]["export_cams"]
    flags = ["--scales", *map(str, export["scales"]), "--flip" if export["flip"] else "--no-flip"]
    assert main(["export-cams", "--manifest", str(manifest_path), "--model", str(model_path), "--split", "train",
                 "--out", str(root / "cams"), "--batch-size", "4", *flags]) == 0
    return root, manifest_path, manifest, model.eval()


def official_cams(model, rgb, labels, scales=(0.5, 1.0, 1.5, 2.0)):
    """VOCDatasetMSF_l2g.__getitem__ (utils/LoadData.py lines 166-189) and the multi-scale branch
    of scripts/test_l2g_voc.py (lines 80-105): each scale resized with PIL bicubic, normalised,
    followed by its mirror; every output map resized to the image (bicubic), the mirrored ones
    flipped back; the mean of all, then ReLU, each map over its maximum + 1e-8; the present
    classes written with cv2.imwrite(name, norm_cam[j] * 255.0), which rounds to uint8.
    Returns {class index j (0-based): uint8 map}."""
    image = Image.fromarray(rgb)
    height, width = rgb.shape[:2]
    mean, std = (torch.tensor(v)[:, None, None] for v in IMAGENET)
    maps = []
    with torch.no_grad():
        for s in scales:
            scaled = image.resize((int(round(image.size[0] * s)), int(round(image.size[1] * s))), resample=Image.BICUBIC)
            tensor = (torch.from_numpy(np.asarray(scaled, dtype=np.float32) / 255).permute(2, 0, 1) - mean) / std
            for m, batch in enumerate((tensor[None], torch.flip(tensor[None], [-1]))):
                cam = F.interpolate(model(batch)["cams"], (height, width), mode="bicubic", align_corners=False)[0]
                cam = cam.numpy()
                maps.append(np.flip(cam, axis=-1) if m % 2 == 1 else cam)
    cam = np.mean(maps, axis=0)
    cam[cam < 0] = 0
    norm = cam / (np.max(cam, (1, 2), keepdims=True) + 1e-8)
    # cv2.imwrite converts a float image to 8 bits with saturate_cast, which rounds half to even
    return {j: np.clip(np.rint(norm[j] * 255.0), 0, 255).astype(np.uint8)
            for j in range(len(labels)) if labels[j] > 1e-5}


def test_cam_export_is_the_official_computation(exported):
    root, _, manifest, model = exported
    layout = VOCLayout(manifest["root"])
    labels = json.loads(open(manifest["labels"]).read())
    compared = 0
    for image_id in split_ids(manifest, "train"):
        multi_hot = np.zeros(manifest["num_classes"])
        multi_hot[[c - 1 for c in labels[image_id]]] = 1
        official = official_cams(model, layout.load_image(image_id), multi_hot)
        ours, classes = load_cams(cam_path(root / "cams", image_id))
        assert [c - 1 for c in classes] == sorted(official)
        for cam, c in zip(ours, classes):
            expected = official[c - 1].astype(np.int64)
            got = np.rint(cam * 255).astype(np.int64)
            assert np.abs(got - expected).max() <= 1  # a float rounding step at most
            assert (got == expected).mean() > 0.995
            compared += 1
    assert compared >= 6


def official_gen_gt(cams_by_class, shape, thr=0.25, num_classes=20):
    """gen_gt.py lines 116-127: argmax over [thr, the CAM PNGs / 255] (background index 0, which
    wins ties), no CRF, no saliency, no ignore."""
    pred = np.zeros((num_classes + 1, *shape), np.float32)
    pred[0] = thr
    for j, cam in cams_by_class.items():
        pred[j + 1] = cam / 255.0
    return np.argmax(pred, axis=0).astype(np.uint8)


def test_pseudo_labels_are_gen_gt_labels(exported):
    root, manifest_path, manifest, _ = exported
    refine = CONFIG["voc"]["refine"]
    assert (refine["background"], refine["threshold"], refine["crf"], refine["ignore_band"]) == ("cam", 0.25, False, None)
    assert main(["refine", "--manifest", str(manifest_path), "--split", "train", "--cams", str(root / "cams"),
                 "--out", str(root / "labels"), "--threshold", str(refine["threshold"]), "--no-crf",
                 "--workers", "1"]) == 0
    for image_id in split_ids(manifest, "train"):
        cams, classes = load_cams(cam_path(root / "cams", image_id))
        stored = {c - 1: np.rint(cam * 255) for cam, c in zip(cams, classes)}  # the official PNGs
        official = official_gen_gt(stored, cams.shape[1:], num_classes=manifest["num_classes"])
        ours = np.asarray(Image.open(root / "labels" / f"{image_id}.png"))
        assert np.array_equal(ours, official)
    values = {int(v) for i in split_ids(manifest, "train") for v in np.unique(np.asarray(Image.open(root / "labels" / f"{i}.png")))}
    assert 0 in values and len(values) >= 2  # background and classes, not one of them alone


class OfficialIOUMetric:
    """IOUMetric of scripts/evaluate_mthr_voc.py lines 9-44 (also gen_gt.py lines 10-46): one
    histogram over ground truth in range and predictions below num_classes; per-class IoU, their
    nanmean (a class predicted but absent from the ground truth counts as 0)."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.hist = np.zeros((num_classes, num_classes))

    def add_batch(self, pred, gt):
        pred, gt = pred.flatten(), gt.flatten()
        mask = (gt >= 0) & (gt < self.num_classes) & (pred < self.num_classes)
        self.hist += np.bincount(self.num_classes * gt[mask].astype(int) + pred[mask],
                                 minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def evaluate(self):
        hist = self.hist
        with np.errstate(invalid="ignore"):  # 0 / 0 for a class in neither: nan, as official
            iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        return iu, np.nanmean(iu)


def official_deeplab_scores(gts, preds, n_class):
    """scores() of deeplab-pytorch libs/utils/metric.py lines 7-36: the mean IoU over the classes
    present in the ground truth."""
    hist = np.zeros((n_class, n_class))
    for gt, pred in zip(gts, preds):
        gt, pred = gt.flatten(), pred.flatten()
        mask = (gt >= 0) & (gt < n_class)
        hist += np.bincount(n_class * gt[mask].astype(int) + pred[mask], minlength=n_class ** 2).reshape(n_class, n_class)
    with np.errstate(invalid="ignore"):
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    valid = hist.sum(axis=1) > 0
    return iu, np.nanmean(iu[valid])


def test_cam_threshold_sweep_is_evaluate_mthr(exported):
    root, manifest_path, manifest, _ = exported
    out = root / "cam_miou.json"
    assert main(["evaluate", "--manifest", str(manifest_path), "--split", "train", "--kind", "cam",
                 "--pred", str(root / "cams"), "--out", str(out), "--workers", "1"]) == 0
    sweep = {round(row["threshold"], 2): row["miou"] for row in json.loads(out.read_text())["sweep"]}
    layout = VOCLayout(manifest["root"])
    for thr in (0.1, 0.15, 0.2, 0.25, 0.3):  # evaluate_mthr_voc.py line 54, the loop of lines 82-101
        metric = OfficialIOUMetric(manifest["num_classes"] + 1)
        for image_id in split_ids(manifest, "train"):
            cams, classes = load_cams(cam_path(root / "cams", image_id))
            stored = {c - 1: np.rint(cam * 255) for cam, c in zip(cams, classes)}
            pred = official_gen_gt(stored, cams.shape[1:], thr, manifest["num_classes"])
            metric.add_batch(pred, np.array(layout.load_mask(image_id), dtype=np.int32))
        assert sweep[thr] == pytest.approx(metric.evaluate()[1], abs=1e-12)


def test_label_map_scores_are_the_official_ones(exported):
    root, manifest_path, manifest, _ = exported
    labels = root / "labels"
    if not labels.is_dir():
        assert main(["refine", "--manifest", str(manifest_path), "--split", "train", "--cams", str(root / "cams"),
                     "--out", str(labels), "--threshold", "0.25", "--no-crf", "--workers", "1"]) == 0
    out = root / "label_miou.json"
    assert main(["evaluate", "--manifest", str(manifest_path), "--split", "train", "--pred", str(labels),
                 "--out", str(out), "--workers", "1"]) == 0
    ours = json.loads(out.read_text())
    layout = VOCLayout(manifest["root"])
    ids = split_ids(manifest, "train")
    gts = [np.array(layout.load_mask(i), dtype=np.int32) for i in ids]
    preds = [np.asarray(Image.open(labels / f"{i}.png")).astype(np.int64) for i in ids]
    metric = OfficialIOUMetric(manifest["num_classes"] + 1)
    for pred, gt in zip(preds, gts):
        metric.add_batch(pred, gt)
    iu, miou = metric.evaluate()
    assert ours["miou"] == pytest.approx(miou, abs=1e-12)
    names = ours["class_names"]
    for index, value in enumerate(iu):
        assert (ours["per_class_iou"][names[index]] is None) == bool(np.isnan(value))
        if not np.isnan(value):
            assert ours["per_class_iou"][names[index]] == pytest.approx(value, abs=1e-12)
    # deeplab-pytorch leaves out classes absent from the ground truth; where none is predicted
    # either, its mean is the same
    dl_iu, dl_miou = official_deeplab_scores(gts, preds, manifest["num_classes"] + 1)
    present = [i for i, name in enumerate(names) if ours["recall"][name] is not None]
    np.testing.assert_allclose([ours["per_class_iou"][names[i]] for i in present], dl_iu[present], atol=1e-12)
    if all(ours["recall"][n] is not None for n, v in ours["per_class_iou"].items() if v is not None):
        assert ours["miou"] == pytest.approx(dl_miou, abs=1e-12)
