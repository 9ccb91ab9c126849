"""Reproducibility (issue 7, point 4): on the CPU, two runs with the same seed give the same bytes,
and the settings and software versions are stored beside each stage's outputs.

The second run is a fresh interpreter, so nothing can be shared between the two but the files.
"""

import json
import subprocess
import sys

import torch

from l2g_core.cli import main
from l2g_core.versions import software_versions

from conftest import prepare_tiny_dataset, tiny_config

REFINE = tiny_config()["datasets"]["demo"]["refine"]
CRF_KEYS = ("iterations", "pos_w", "pos_xy_std", "bi_w", "bi_xy_std", "bi_rgb_std")
CRF = [f"--{key.replace('_', '-')}={REFINE[key]}" for key in CRF_KEYS]
LABELLING = ["--background", REFINE["background"], "--threshold", str(REFINE["threshold"])]  # the demo's: cam


def demo_run(manifest, classifier, out):
    """The demo's stage 1, CAM export (3 scales, flipped), pseudo labels (the demo's background from
    the CAMs at its threshold, and its CRF, on) and CAM scores: one `l2g` command each."""
    return [
        ["train-cls", "--manifest", manifest, "--out", f"{out}/cls/model.pt", "--epochs", "1", "--input-size", "64",
         "--batch-size", "4", "--lr", "0.05", "--schedule", "poly", "--seed", "0", "--device", "cpu"],
        ["export-cams", "--manifest", manifest, "--model", classifier, "--out", f"{out}/cams",
         "--scales", "0.5", "1.0", "1.5", "--flip", "--batch-size", "4", "--device", "cpu"],
        ["refine", "--manifest", manifest, "--cams", f"{out}/cams", "--out", f"{out}/pseudo_labels",
         *LABELLING, "--crf", *CRF, "--workers", "2"],
        ["evaluate", "--manifest", manifest, "--split", "train", "--kind", "cam", "--pred", f"{out}/cams",
         "--out", f"{out}/cams/miou.json"],
    ]


def without_paths(manifest):
    """A folder manifest with the settings that name the run's own folders left out."""
    settings = {k: v for k, v in manifest["settings"].items() if k not in ("cams", "model")}
    return {**manifest, "settings": settings}


def test_two_runs_give_identical_cams_pseudo_labels_and_scores(tmp_path):
    manifest = prepare_tiny_dataset(tmp_path, train=4, val=2)
    classifier = tmp_path / "shared" / "cls" / "model.pt"
    first = tmp_path / "first"
    for command in demo_run(str(manifest), str(classifier), tmp_path / "shared")[:1] + \
            demo_run(str(manifest), str(classifier), first)[1:]:
        assert main(command) == 0
    # the second run: a new process trains its own classifier and repeats the stages with the shared one
    second = tmp_path / "second"
    script = "import sys\nfrom l2g_core.cli import main\nfor c in %r:\n    assert main(c) == 0\n" % (
        demo_run(str(manifest), str(classifier), str(second)),)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (classifier, second / "cls" / "model.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # training too is bit for bit the same
    for folder, pattern in (("cams", "*.npz"), ("pseudo_labels", "*.png")):
        names = sorted(p.name for p in (first / folder).glob(pattern))
        assert len(names) == 4 and names == sorted(p.name for p in (second / folder).glob(pattern))
        for name in names:
            assert (first / folder / name).read_bytes() == (second / folder / name).read_bytes(), name
        one, two = (json.loads((run / folder / "manifest.json").read_text()) for run in (first, second))
        assert without_paths(one) == without_paths(two)
    assert (first / "cams" / "miou.json").read_bytes() == (second / "cams" / "miou.json").read_bytes()
    assert json.loads((first / "pseudo_labels" / "manifest.json").read_text())["settings"]["crf"] is True


def test_settings_and_versions_are_stored_beside_the_outputs(tmp_path):
    """What each stage records of how it was made (the issue asks for the resolved config and the
    package versions beside each stage's outputs)."""
    manifest = prepare_tiny_dataset(tmp_path, train=4, val=2)
    classifier = tmp_path / "run" / "cls" / "model.pt"
    for command in demo_run(str(manifest), str(classifier), tmp_path / "run"):
        assert main(command) == 0
    versions = software_versions()
    assert set(versions) == {"l2g", "python", "torch", "torchvision", "numpy"}
    # models: every training setting (the stage's options and the training loop's) and the versions
    model = torch.load(classifier, weights_only=True)
    assert model["versions"] == versions
    assert {"input_size": 64, "lr": 0.05, "epochs": 1, "batch_size": 4, "seed": 0,
            "schedule": "poly"}.items() <= model["settings"].items()
    # per-image folders: the options of the stage and the versions, in the manifest written last
    cams = json.loads((tmp_path / "run" / "cams" / "manifest.json").read_text())
    assert cams["versions"] == versions
    assert cams["settings"]["scales"] == [0.5, 1.0, 1.5] and cams["settings"]["flip"] is True
    labels = json.loads((tmp_path / "run" / "pseudo_labels" / "manifest.json").read_text())
    assert labels["versions"] == versions
    assert labels["settings"]["threshold"] == REFINE["threshold"] and labels["settings"]["crf"] is True
    assert labels["settings"]["crf_params"] == {key: REFINE[key] for key in CRF_KEYS}
    # the dataset manifest records the l2g version
    assert json.loads(manifest.read_text())["l2g_version"] == versions["l2g"]
