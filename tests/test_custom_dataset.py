"""A dataset of one's own: a VOC-layout folder of 3 classes of generated shapes, described by a
few lines of config (recipe demo), runs to miou.json with its class names everywhere."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageFilter

from l2g_core.cli import main
from l2g_core.io_utils import write_label_png

from conftest import run_snakemake, tiny_config

CLASSES = ["square", "disk", "triangle"]
SIZE = 64


def shape_mask(kind, rng):
    """A boolean (SIZE, SIZE) mask of one shape (1 square, 2 disk, 3 triangle) at a random place."""
    radius = int(rng.integers(9, 15))
    cy, cx = rng.integers(radius, SIZE - radius, size=2)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    if kind == 1:
        return (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius)
    if kind == 2:
        return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
    return (rows - cy <= radius) & (rows - cy >= -radius + 2 * abs(cols - cx))


def write_shapes(root, train, val, seed=0):
    """JPEGImages/, SegmentationClassAug/, Sal/ and the split lists of `train` + `val` images, each
    with one or two shapes of different classes on a noisy background; each class has its colour."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 60, 50], [60, 170, 70], [60, 80, 210]])
    for folder in ("JPEGImages", "SegmentationClassAug", "Sal", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"img_{i:03d}" for i in range(train + val)]
    for image_id in ids:
        image = rng.integers(90, 160, (SIZE, SIZE, 3)).astype(np.float32)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for kind in rng.choice([1, 2, 3], size=int(rng.integers(1, 3)), replace=False):
            inside = shape_mask(kind, rng) & (mask == 0)
            mask[inside] = kind
            image[inside] = colours[kind - 1] + rng.normal(0, 12, (int(inside.sum()), 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg",
                                                                      quality=95)
        write_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        Image.fromarray((mask > 0).astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(2)).save(
            root / "Sal" / f"{image_id}.png")
    lists = root / "ImageSets/Segmentation"
    (lists / "train.txt").write_text("\n".join(ids[:train]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[train:]) + "\n")
    return root


# What a user writes (README, "Your own dataset"): the demo's method on a folder of their own.
USER_CONFIG = """
datasets:
  shapes:
    recipe: demo
    kind: custom
    root: {root}
    classes: [square, disk, triangle]
    splits: {{train: train, val: val}}
"""


@pytest.mark.slow
def test_a_three_class_dataset_runs_to_miou_json_with_its_class_names(tmp_path):
    root = write_shapes(tmp_path / "shapes", train=12, val=4)
    config = tiny_config()  # the demo recipe shrunk to seconds
    config["datasets"].update(yaml.safe_load(USER_CONFIG.format(root=root))["datasets"])
    # fewer jobs (the demo's shards and second L2G run are tested in test_workflow.py)
    config["datasets"]["shapes"].update(jobs={"shards": 1}, train_l2g_no_saliency=None)
    run_snakemake(tmp_path / "work", "--cores", "2", "results/shapes/miou.json", config=config)
    results = tmp_path / "work/results/shapes"
    names = ["background", *CLASSES]
    manifest = json.loads((results / "data/manifest.json").read_text())
    assert manifest["kind"] == "custom" and manifest["class_names"] == CLASSES
    for metrics in ("miou.json", "cams/miou.json", "pseudo_labels/miou.json"):
        assert list(json.loads((results / metrics).read_text())["per_class_iou"]) == names, metrics
    rows = list(csv.reader((results / "miou.csv").read_text().splitlines()))
    assert [row[0] for row in rows[1:-1]] == names
    assert yaml.safe_load((results / "config.yaml").read_text())["outputs"]["cls"]["settings"]["backbone"] == "small"


@pytest.mark.slow
def test_a_dataset_without_sal_runs_to_miou_json_on_saliency_maps_made_from_its_cams(tmp_path):
    """Issue 24's done-when: no Sal/, `saliency: {source: cams}`, and L2G reads the pipeline's maps."""
    root = write_shapes(tmp_path / "shapes", train=12, val=4)
    shutil.rmtree(root / "Sal")
    config = tiny_config()
    config["datasets"].update(yaml.safe_load(USER_CONFIG.format(root=root))["datasets"])
    config["datasets"]["shapes"].update(jobs={"shards": 2}, train_l2g_no_saliency=None, saliency={"source": "cams"})
    # the pseudo labels read the maps too (the background from the saliency)
    config["datasets"]["shapes"]["refine"] = {"background": "saliency", "threshold": None, "ignore_band": [0.3, 0.3]}
    work = tmp_path / "work"
    # the report too: its pseudo labels of val images need maps made as the stage made them
    run_snakemake(work, "--cores", "2", "results/shapes/miou.json", "results/shapes/report/samples.png", config=config)
    results = work / "results/shapes"
    maps = (results / "saliency").resolve()
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert all((maps / f"{image_id}.png").is_file() for image_id in ids)
    # L2G's record says where its maps came from: the model file's settings and its log
    l2g = torch.load(results / "l2g/model.pt", map_location="cpu", weights_only=True)["settings"]["saliency_maps"]
    assert l2g["dir"] == str(maps) and l2g["source"] == "cams"
    assert l2g["cams"] == str((results / "cls_cams").resolve())
    assert f"saliency maps: {maps} (source cams)" in (results / "logs/train_l2g.log").read_text()
    labels = json.loads((results / "pseudo_labels/manifest.json").read_text())["settings"]["saliency_maps"]
    assert labels == l2g
    score = json.loads((results / "pseudo_labels/miou.json").read_text())["saliency_maps"]
    assert score["maps"] == l2g and 0.0 <= score["f_adaptive"] <= 1.0
    record = yaml.safe_load((results / "config.yaml").read_text())["outputs"]
    assert record["l2g"]["inputs"]["saliency"] == "results/shapes"
    assert record["saliency"]["settings"]["source"] == "cams"
    assert (results / "report/samples.png").stat().st_size > 0


def test_prepare_reads_the_class_names_from_classes_txt_and_refuses_a_value_beyond_them(tmp_path, capsys):
    root = write_shapes(tmp_path / "shapes", train=4, val=2)
    prepare = ["prepare", "--name", "shapes", "--kind", "custom", "--root", str(root), "--split", "train=train",
               "--split", "val=val", "--out", str(tmp_path / "prep/manifest.json")]
    assert main(prepare) == 1
    assert "--kind custom: give --classes or write the class names" in capsys.readouterr().err
    (root / "classes.txt").write_text("square\ndisk\ntriangle\n")
    assert main(prepare) == 0
    assert json.loads((tmp_path / "prep/manifest.json").read_text())["class_names"] == CLASSES
    assert main([*prepare, "--classes", "square", "disk"]) == 1  # the masks hold triangles, value 3
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "mask value 3 is outside 0..2" in err[0]


def test_prepare_refuses_a_class_listed_twice(tmp_path, capsys):
    root = write_shapes(tmp_path / "shapes", train=2, val=1)
    assert main(["prepare", "--name", "s", "--kind", "custom", "--classes", "a", "b", "a", "--root", str(root),
                 "--split", "train=train", "--split", "val=val", "--out", str(tmp_path / "m.json")]) == 1
    assert "--classes: class 'a' is listed twice" in capsys.readouterr().err
