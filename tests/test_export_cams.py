"""CAM export: the file contract, multi-scale batching and shards."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from l2g_core.cam_io import cams_to_labels, load_cams, save_cams
from l2g_core.cams import multiscale_cams
from l2g_core.cli import main
from l2g_core.model_io import load_classifier
from l2g_core.models import build_classifier

from conftest import tiny_classifier


def test_cam_file_round_trip_keeps_only_the_given_classes(tmp_path):
    cams = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    save_cams(tmp_path / "a.npz", cams, [3, 5])
    loaded, classes = load_cams(tmp_path / "a.npz")
    assert classes.tolist() == [3, 5] and loaded.shape == (2, 5, 7)
    with np.load(tmp_path / "a.npz") as data:
        assert data["cams"].dtype == np.uint8  # the official PNGs' 1/255 steps
    assert np.abs(loaded - cams).max() <= 0.5 / 255 + 1e-7
    assert np.array_equal(loaded * 255, np.rint(cams * 255))
    assert not list(tmp_path.glob("*.tmp"))


def test_cams_to_labels_gives_ties_to_the_background():
    cams = np.array([[[0.5, 0.2]], [[0.1, 0.9]]], dtype=np.float32)
    assert cams_to_labels(cams, [2, 4], 0.5).tolist() == [[0, 4]]


def test_batched_flipped_scales_equal_one_image_at_a_time():
    torch.manual_seed(0)
    model = build_classifier("small", 3).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    batched = multiscale_cams(model, images, [0.5, 1.0, 1.5], flip=True)
    for i in range(3):
        single = multiscale_cams(model, images[i:i + 1], [0.5, 1.0, 1.5], flip=True)
        assert torch.allclose(batched[i:i + 1], single, atol=1e-5)
    assert batched.shape == (3, 4, 48, 40)  # every channel, background last


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    manifest, model = tiny_classifier(root, train=10)
    return root, manifest, model


def _export(manifest, model, out, *extra):
    return main(["export-cams", "--manifest", str(manifest), "--model", str(model), "--out", str(out),
                 "--scales", "0.5", "1.0", "--batch-size", "3", *extra])


def test_export_writes_present_classes_at_image_size(trained):
    root, manifest, model = trained
    out = root / "cams"
    assert _export(manifest, model, out) == 0
    labels = json.loads((root / "prep/labels.json").read_text())
    ids = (root / "prep/train.txt").read_text().split()
    listing = json.loads((out / "manifest.json").read_text())
    assert listing["num_images"] == len(ids) and set(listing["files"]) == {f"{i}.npz" for i in ids}
    for image_id in ids:
        cams, classes = load_cams(out / f"{image_id}.npz")
        assert classes.tolist() == labels[image_id]
        assert cams.shape == (len(classes), 64, 64)
        peaks = cams.reshape(len(classes), -1).max(axis=1)
        assert cams.min() >= 0 and all(p == 0 or abs(p - 1) < 2e-3 for p in peaks)  # 0: no response


def test_shards_together_equal_the_whole_export_bit_for_bit(trained):
    root, manifest, model = trained
    whole, sharded = root / "whole", root / "sharded"
    assert _export(manifest, model, whole) == 0
    assert _export(manifest, model, sharded, "--shard", "1/2") == 0
    first = set(p.name for p in sharded.glob("*.npz"))
    assert _export(manifest, model, sharded, "--shard", "2/2") == 0
    names = sorted(p.name for p in whole.glob("*.npz"))
    assert sorted(p.name for p in sharded.glob("*.npz")) == names and 0 < len(first) < len(names)
    for name in names:
        assert (whole / name).read_bytes() == (sharded / name).read_bytes()
    shard_lists = [json.loads((sharded / f"manifest-shard-{i}-of-2.json").read_text())["files"] for i in (1, 2)]
    assert not set(shard_lists[0]) & set(shard_lists[1])
    assert set(shard_lists[0]) | set(shard_lists[1]) == set(names)


def test_bad_shard_is_a_one_line_error(trained, capsys):
    root, manifest, model = trained
    assert _export(manifest, model, root / "bad", "--shard", "3/2") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shard 3/2" in err[0]


def test_decoding_in_loader_workers_writes_the_same_files(trained):
    """--workers 2 (images decoded and rescaled in data-loader processes, files written by a
    background thread) writes the files of the in-process export, byte for byte; each file holds
    only its image's classes (picked from the batch's maps before the copy to the host)."""
    root, manifest, model = trained
    here, loaders = root / "here", root / "loaders"
    assert _export(manifest, model, here) == 0
    assert _export(manifest, model, loaders, "--workers", "2") == 0
    names = sorted(p.name for p in here.glob("*.npz"))
    assert names == sorted(p.name for p in loaders.glob("*.npz")) and len(names) == 10
    for name in names:
        assert (here / name).read_bytes() == (loaders / name).read_bytes()
    labels = json.loads((root / "prep/labels.json").read_text())
    images = np.stack([np.asarray(Image.open(root / "data/JPEGImages" / f"{name[:-4]}.jpg")) for name in names[:3]])
    net = load_classifier(model)[0].eval()
    expected = multiscale_cams(net, images, [0.5, 1.0], flip=True).numpy()
    for name, maps in zip(names[:3], expected):
        cams, classes = load_cams(here / name)
        assert classes.tolist() == labels[name[:-4]]
        assert np.abs(cams - maps[[c - 1 for c in classes]]).max() <= 0.5 / 255 + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16 autocast)")
def test_bf16_export_is_the_fp32_export_within_tolerance(trained):
    root, manifest, model = trained
    fp32, bf16 = root / "fp32", root / "bf16"
    assert _export(manifest, model, fp32, "--device", "cuda", "--workers", "2") == 0
    assert _export(manifest, model, bf16, "--device", "cuda", "--workers", "2", "--precision", "bf16") == 0
    errors = [np.abs(load_cams(fp32 / p.name)[0] - load_cams(p)[0]).max() for p in bf16.glob("*.npz")]
    assert len(errors) == 10 and max(errors) <= 0.05, errors
