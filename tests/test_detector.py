"""The detector saliency source (issue 24): transparent-background's own model class
(InSPyReNet_SwinB) with random weights this test writes, loaded by our code, checked before any
job, and run through the saliency rule and its shards on a custom dataset without Sal/."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from l2g_core import detector
from l2g_core.cli import main
from l2g_core.errors import L2GError

from conftest import run_snakemake, tiny_config
from test_custom_dataset import USER_CONFIG, write_shapes

SIZE = 64  # the network's input size here: small enough for the CPU (the real checkpoint: 1024)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The package's network with random weights, saved as its checkpoints are: a plain state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detector") / "inspyrenet.pth"
    torch.save(detector.build_model(SIZE).state_dict(), path)
    return path


def test_the_weights_check_names_what_loads_and_refuses_another_file(weights, tmp_path):
    report = detector.check_weights(weights, SIZE)
    assert report.fits() and len(report.loaded) == len(torch.load(weights, weights_only=True))
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(L2GError) as error:
        detector.check_weights(other, SIZE, where="datasets.mine.saliency.weights")
    message = str(error.value)
    assert message.startswith(f"datasets.mine.saliency.weights: {other} is not an InSPyReNet (Swin-B) state dict")
    assert f"0 of {len(report.loaded)} tensors" in message and "unknown to the class, e.g. fc.weight" in message
    (tmp_path / "cut.pth").write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(L2GError, match="cut.pth is not a torch weights file"):
        detector.check_weights(tmp_path / "cut.pth", SIZE)
    with pytest.raises(L2GError, match="not found \\(nothing is downloaded"):
        detector.check_weights(tmp_path / "absent.pth", SIZE)


def test_the_detector_is_the_package_class_with_the_file_weights(weights):
    model = detector.load_detector(weights, SIZE, "cpu")
    assert type(model).__module__ == "transparent_background.InSPyReNet"
    saved = torch.load(weights, weights_only=True)
    for key in ("backbone.patch_embed.proj.weight", "decoder.conv1.conv.weight"):
        assert torch.equal(model.state_dict()[key], saved[key])
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    saliency = detector.predict(model, image, SIZE, "cpu")
    assert saliency.shape == (40, 56) and saliency.dtype == np.uint8 and saliency.max() > saliency.min()


def shapes_config(root, weights, **saliency):
    """The README's custom dataset, without Sal/, its maps made by the detector from `weights`."""
    config = tiny_config()
    config["datasets"].update(yaml.safe_load(USER_CONFIG.format(root=root))["datasets"])
    config["datasets"]["shapes"].update(
        jobs={"shards": 2}, train_l2g_no_saliency=None,
        saliency={"source": "detector", "weights": str(weights), "input_size": SIZE, **saliency})
    return config


def test_a_wrong_weights_file_stops_the_workflow_before_any_job(tmp_path):
    root = write_shapes(tmp_path / "shapes", train=2, val=1)
    shutil.rmtree(root / "Sal")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    result = run_snakemake(tmp_path / "work", "-n", "--cores", "1", "results/shapes/miou.json",
                           config=shapes_config(root, tmp_path / "resnet.pth"), check=False)
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and "datasets.shapes.saliency.weights:" in lines[0] and "unknown to the class" in lines[0]


@pytest.mark.slow
def test_the_detector_source_runs_through_the_rule_and_its_shards(weights, tmp_path, capsys, monkeypatch):
    root = write_shapes(tmp_path / "shapes", train=4, val=2)
    shutil.rmtree(root / "Sal")  # a dataset that arrives without saliency maps
    work = tmp_path / "work"
    run_snakemake(work, "--cores", "2", "results/shapes/saliency/score.json", config=shapes_config(root, weights))
    results = work / "results/shapes/saliency"
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["shards"] == 2 and sorted(manifest["ids"]) == sorted(ids)
    for shard in (1, 2):  # both shards ran the rule, each on its half
        assert (work / f"results/shapes/logs/saliency-{shard}-of-2.log").is_file()
    settings = manifest["settings"]
    assert settings["source"] == "detector" and settings["package"] == "transparent-background 1.3.4"
    assert settings["weights"] == {"path": str(weights.resolve()), "bytes": weights.stat().st_size,
                                   "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    # the maps are the package class's, with the weights the test wrote
    model = detector.load_detector(weights, SIZE, "cpu")
    image = np.asarray(Image.open(root / "JPEGImages" / f"{ids[0]}.jpg").convert("RGB"))
    written = np.asarray(Image.open(results / f"{ids[0]}.png"))
    assert np.abs(written.astype(int) - detector.predict(model, image, SIZE, "cpu").astype(int)).max() <= 1
    score = json.loads((results / "score.json").read_text())
    assert score["maps"]["source"] == "detector" and score["maps"]["weights"] == settings["weights"]
    assert 0.0 <= score["mae"] <= 1.0 and score["num_images"] == len(ids)
    # l2g doctor shows the check the workflow ran
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "shapes", "--configfile", str(work / "config.yaml"), "--results", str(work / "results")]) == 0
    rows = capsys.readouterr().out.splitlines()
    keys = len(torch.load(weights, weights_only=True))
    weights_row = next(line for line in rows if line.startswith("saliency.weights"))
    assert " ok " in weights_row and f"{keys} of {keys} tensors of {detector.MODEL_CLASS} load" in weights_row
    saliency_row = next(line for line in rows if line.startswith("saliency "))
    assert "made by the pipeline (saliency: {source: detector})" in saliency_row
