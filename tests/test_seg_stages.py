"""train-seg, predict-seg and label-seg (shards), gather and score-seg on a tiny synthetic dataset."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from l2g_core.cli import main
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest
from l2g_core.data.torch_data import SegmentationCrops, normalise
from l2g_core.evaluation import confusion, label_names, scores
from l2g_core.io_utils import write_json
from l2g_core.stages.label_seg import probabilities
from l2g_core.model_io import load_segmenter

from conftest import prepare_tiny_dataset

SEG_OPTIONS = ["--backbone", "small", "--aspp-rates", "1", "2", "--crop-size", "32", "--batch-size", "2",
               "--lr", "0.01", "--schedule", "poly", "--no-freeze-bn"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset, "pseudo labels" (the masks with a 255 square), and a DeepLab trained 5 updates."""
    root = tmp_path_factory.mktemp("seg")
    manifest = prepare_tiny_dataset(root, train=8, val=5)
    layout = VOCLayout(root / "data")
    labels = root / "pseudo"
    labels.mkdir()
    for image_id in (root / "prep/train.txt").read_text().split():
        mask = layout.load_mask(image_id).copy()
        mask[:8, :8] = 255
        Image.fromarray(mask).save(labels / f"{image_id}.png")
    write_json(labels / "manifest.json", {"stage": "refine"})
    model = root / "seg/model.pt"
    assert main(["train-seg", "--manifest", str(manifest), "--labels", str(labels), "--out", str(model),
                 "--iterations", "5", *SEG_OPTIONS]) == 0
    return root, manifest, model


def predict(manifest, model, out, *label_options, shard=None):
    """predict-seg's logits into OUT_logits (the GPU job), then label-seg's labels into OUT."""
    logits = out.parent / f"{out.name}_logits"
    sharding = ["--shard", shard] if shard else []
    network = main(["predict-seg", "--manifest", str(manifest), "--model", str(model), "--out", str(logits),
                    "--scales", "0.75", "1.0", "--batch-size", "2", *sharding])
    return network or main(["label-seg", "--manifest", str(manifest), "--logits", str(logits), "--out", str(out),
                            "--workers", "1", *sharding, *label_options])


def test_train_seg_stops_at_its_iteration_budget_and_records_what_it_saw(trained):
    root, manifest, model = trained
    rows = list(csv.DictReader((root / "seg/train_log.csv").read_text().splitlines()))
    assert int(rows[-1]["update"]) == 5 and float(rows[-1]["lr"]) < float(rows[0]["lr"])
    net, state = load_segmenter(model, class_names=load_manifest(manifest)["class_names"])
    assert state["trained_on"]["split"] == "train" and state["trained_on"]["labels"].endswith("pseudo")
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 7, 8, 8)


def test_crops_are_seeded_padded_with_ignore_and_of_the_crop_size(trained):
    root, manifest, _ = trained
    crops = SegmentationCrops(load_manifest(manifest), "train", 96, scale_range=(0.5, 0.5), seed=3)
    sample = crops[0]
    assert sample["image"].shape == (3, 96, 96) and sample["label"].shape == (96, 96)
    assert (sample["label"][40:, 40:] == 255).all()  # a 64 px image at scale 0.5 is 32 px: the rest is padding
    again = crops[0]
    assert torch.equal(sample["image"], again["image"]) and torch.equal(sample["label"], again["label"])
    crops.epoch = 1
    small = SegmentationCrops(load_manifest(manifest), "train", 16, scales=[0.5, 1.0], seed=3)
    assert {tuple(small[i]["label"].shape) for i in range(4)} == {(16, 16)}


def test_prediction_shards_gather_to_the_whole_run_bit_for_bit(trained):
    root, manifest, model = trained
    whole, sharded = root / "whole", root / "sharded"
    assert predict(manifest, model, whole) == 0
    for shard in ("1/2", "2/2"):
        assert predict(manifest, model, sharded, shard=shard) == 0
    assert not (sharded / "manifest.json").exists()
    assert main(["gather", "--manifest", str(manifest), "--split", "val", "--folder", str(sharded),
                 "--shards", "2"]) == 0
    files = sorted(p.relative_to(whole) for p in whole.rglob("*.png"))
    assert len(files) == 10  # final and no-CRF labels of the 5 val images
    assert files == sorted(p.relative_to(sharded) for p in sharded.rglob("*.png"))
    for name in files:
        assert (whole / name).read_bytes() == (sharded / name).read_bytes()
    merged, single = (json.loads((d / "manifest.json").read_text()) for d in (sharded, whole))
    assert merged["files"] == single["files"] and merged["ids"] == single["ids"] and merged["shards"] == 2


def test_labels_from_the_logits_files_are_those_of_the_network_in_one_go(trained, capsys):
    """The GPU job stores each view's logits at the network's resolution; the CPU job's argmax is
    that of the probabilities computed from the images directly (each view resized to the image,
    softmax, a mirrored view mirrored back, summed over the views)."""
    root, manifest, model = trained
    pred = root / "whole"
    if not (pred / "manifest.json").exists():
        assert predict(manifest, model, pred) == 0
    net, _ = load_segmenter(model)
    net.eval()
    layout = VOCLayout(root / "data")
    ids = (root / "prep/val.txt").read_text().split()
    for image_id, from_files in probabilities(root / "whole_logits", ids):
        image = normalise(layout.load_image(image_id))[None]
        height, width = image.shape[-2:]
        total = 0
        with torch.no_grad():
            for scale in (0.75, 1.0):
                both = []
                for mirrored in (False, True):
                    view = image.flip(-1) if mirrored else image
                    if scale != 1:
                        view = F.interpolate(view, size=(round(height * scale), round(width * scale)),
                                             mode="bilinear", align_corners=False)
                    probs = F.interpolate(net(view), size=(height, width), mode="bilinear",
                                          align_corners=False).softmax(dim=1)
                    both.append(probs.flip(-1) if mirrored else probs)
                total = total + (both[0] + both[1])
        np.testing.assert_allclose(from_files, total[0].numpy() / 4, rtol=1e-5, atol=1e-6)
        written = np.asarray(Image.open(pred / "no_crf" / f"{image_id}.png"))
        assert np.array_equal(written, from_files.argmax(axis=0))
    # labels for another split than the logits are refused before anything is written
    capsys.readouterr()
    assert main(["label-seg", "--manifest", str(manifest), "--logits", str(root / "whole_logits"), "--split", "train",
                 "--out", str(root / "wrong")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "whole_logits/manifest.json: not the logits of shard all of split train" in err[0]
    assert not (root / "wrong").exists()


def test_score_seg_writes_the_final_json_and_table(trained):
    root, manifest, model = trained
    pred = root / "whole"
    if not (pred / "manifest.json").exists():
        assert predict(manifest, model, pred) == 0
    stage = root / "cams_miou.json"
    stage.write_text(json.dumps({"miou": 0.4, "best_threshold": 0.3, "split": "train", "sweep": []}))
    out = root / "miou.json"
    assert main(["score-seg", "--manifest", str(manifest), "--pred", str(pred), "--stage", f"cams={stage}",
                 "--out", str(out), "--workers", "2"]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"miou", "miou_no_crf", "per_class_iou", "pixel_accuracy", "split", "num_images",
                           "stages"}
    names = label_names(load_manifest(manifest)["class_names"], 7)
    assert list(result["per_class_iou"]) == names and result["split"] == "val" and result["num_images"] == 5
    assert result["stages"] == {"cams": {"miou": 0.4, "best_threshold": 0.3, "split": "train", "file": str(stage)}}
    layout = VOCLayout(root / "data")
    ids = (root / "prep/val.txt").read_text().split()
    by_hand = {folder: scores(sum(confusion(layout.load_mask(i), np.asarray(Image.open(pred / folder / f"{i}.png")), 7)
                                  for i in ids), names)
               for folder in ("", "no_crf")}
    assert result["miou"] == pytest.approx(by_hand[""]["miou"])
    assert result["miou_no_crf"] == pytest.approx(by_hand["no_crf"]["miou"])
    assert result["pixel_accuracy"] == pytest.approx(by_hand[""]["pixel_accuracy"])
    table = list(csv.reader((root / "miou.csv").read_text().splitlines()))
    assert table[0] == ["class", "iou", "iou_no_crf", "precision", "recall"] and table[-1][0] == "mean"
    assert [row[0] for row in table[1:-1]] == names


def test_gather_refuses_a_missing_or_foreign_shard(trained, capsys):
    root, manifest, model = trained
    folder = root / "gather_bad"
    assert predict(manifest, model, folder, shard="1/2") == 0
    assert main(["gather", "--manifest", str(manifest), "--split", "val", "--folder", str(folder),
                 "--shards", "2"]) == 1
    assert "manifest-shard-2-of-2.json: not found" in capsys.readouterr().err
    assert predict(manifest, model, folder, "--no-crf", shard="2/2") == 0  # other settings
    capsys.readouterr()
    assert main(["gather", "--manifest", str(manifest), "--split", "val", "--folder", str(folder),
                 "--shards", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other settings than shard 1 (settings differs)" in err[0]
    assert not (folder / "manifest.json").exists()


def test_train_seg_refuses_incomplete_pseudo_labels(trained, tmp_path, capsys):
    root, manifest, _ = trained
    labels = tmp_path / "labels"
    shutil.copytree(root / "pseudo", labels)
    (labels / "manifest.json").unlink()
    out = tmp_path / "m.pt"
    assert main(["train-seg", "--manifest", str(manifest), "--labels", str(labels), "--out", str(out),
                 "--iterations", "1", *SEG_OPTIONS]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json: not found" in err[0] and not out.exists()
