"""Shared helpers: the repository root and a Snakemake runner on a scratch working directory."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# The tiny demo is far too small to meet the demo's expectations (config datasets.demo.expect:
# margins of 5 points over the control, 0.88 of the supervised DeepLab): its runs declare what any
# finished tiny run meets, so that the demo chain runs with strict_expectations (finished_demo) and
# still goes through the machinery: a range judged by its scorer, a ratio by the final score.
TINY_EXPECT = {"cams": [{"min": 0.0, "max": 1.0, "hint": "an mIoU is a fraction of 1"}],
               "seg": [{"divided_by": "supervised", "min": 0.0, "hint": "a ratio of two mIoUs is not negative"}]}


def tiny_config(**demo_overrides):
    """The shipped config with the demo shrunk to seconds of CPU work (and expectations it meets)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    demo = config["datasets"]["demo"]
    demo["expect"] = TINY_EXPECT
    demo["synthetic"] = {"train": 12, "val": 4, "size": 64, "seed": 0}
    demo["train_cls"].update(input_size=64, epochs=1, batch_size=4)
    demo["train_l2g"].update(input_size=64, crop_size=32, num_crops=4, epochs=1, batch_size=4)
    demo["export_cams"].update(scales=[1.0], batch_size=4)
    demo["train_seg"].update(crop_size=32, iterations=2, batch_size=2)
    demo["predict_seg"].update(scales=[1.0], batch_size=4)
    demo.update(demo_overrides)
    return config


def run_snakemake(workdir, *args, config=None, check=True, env=None):
    """Run the repository's Snakefile in `workdir` with `config` written to workdir/config.yaml."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config if config is not None else tiny_config()))
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config_path), "--workflow-profile", str(REPO / "profiles" / "default"),
               *args]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture
def snakemake_runner():
    return run_snakemake


def prepare_tiny_dataset(root, train, val=2, size=64):
    """A synthetic dataset under root/data, prepared into root/prep; returns the manifest path."""
    from l2g_core.cli import main

    assert main(["make-synthetic", str(root / "data"), "--train", str(train), "--val", str(val),
                 "--size", str(size), "--seed", "0", "--workers", "1"]) == 0
    manifest = root / "prep" / "manifest.json"
    assert main(["prepare", "--name", "demo", "--kind", "synthetic", "--root", str(root / "data"),
                 "--split", "train=train", "--split", "val=val", "--out", str(manifest)]) == 0
    return manifest


# A one-epoch stage-1 run on a tiny dataset of 64 px images: seconds on a CPU.
TINY_CLS_OPTIONS = ("--input-size", "64", "--batch-size", "4", "--lr", "0.01", "--epochs", "1")


def tiny_classifier(root, *options, train=8, val=2):
    """A prepare_tiny_dataset under root and a classifier trained on it for one epoch (TINY_CLS_OPTIONS,
    then `options`) in root/cls/model.pt; returns (manifest, model)."""
    from l2g_core.cli import main

    manifest = prepare_tiny_dataset(root, train=train, val=val)
    model = root / "cls" / "model.pt"
    assert main(["train-cls", "--manifest", str(manifest), "--out", str(model), *TINY_CLS_OPTIONS, *options]) == 0
    return manifest, model


def cams_from_masks(root, peak):
    """CAMs of every training image of a prepare_tiny_dataset root, written to root/cams: each
    present class is `peak` on its ground-truth mask, plus uniform noise in [0, 0.3). Returns the
    VOC layout, the training ids and their labels."""
    import json

    from l2g_core.cam_io import save_cams
    from l2g_core.data.layout import VOCLayout

    layout = VOCLayout(root / "data")
    ids = (root / "prep/train.txt").read_text().split()
    labels = json.loads((root / "prep/labels.json").read_text())
    rng = np.random.default_rng(0)
    for image_id in ids:
        mask = layout.load_mask(image_id)
        cams = np.stack([(mask == c) * peak + rng.uniform(0, 0.3, mask.shape) for c in labels[image_id]])
        save_cams(root / "cams" / f"{image_id}.npz", cams, labels[image_id])
    return layout, ids, labels


# The modules whose tests share the finished demo chain (finished_demo): one xdist worker runs them
# all, so the chain runs once. Every other module is one unit of work, so a module-scoped fixture
# (a Snakemake run, a cluster) is built once too.
DEMO_CHAIN_MODULES = ("test_workflow.py", "test_report.py", "test_experiments.py")


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::")[0]
            return "demo chain" if Path(module).name in DEMO_CHAIN_MODULES else module

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(items):
    """Tests on the finished demo chain are slow and must be in DEMO_CHAIN_MODULES (else the chain is
    built again); slow tests come first, so that no worker is left with a long one at the end."""
    for item in items:
        if "finished_demo" in getattr(item, "fixturenames", ()):
            if item.path.name not in DEMO_CHAIN_MODULES:
                raise pytest.UsageError(f"{item.nodeid} uses finished_demo: add its module to DEMO_CHAIN_MODULES")
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


FINAL_TARGETS = ("results/demo/miou.json", "results/demo/supervised/miou.json")


@pytest.fixture(scope="session")
def finished_demo(tmp_path_factory):
    """A working directory where the tiny demo chain has run to the end, report figures included
    (shared by the workflow and report tests: one run of the whole chain per test session)."""
    from l2g_core.stages.plot_report import FIGURES

    workdir = tmp_path_factory.mktemp("chain")
    config = tiny_config()
    config["strict_expectations"] = True  # CI: a failed expectation of the tiny demo fails the chain
    run_snakemake(workdir, "--cores", "2", *FINAL_TARGETS, *(f"results/demo/report/{f}" for f in FIGURES),
                  config=config)
    return workdir


def stage_args(stage, section, *extra):
    """The options a stage receives from a config section, parsed as the workflow passes them."""
    import shlex

    from l2g_core.cli import build_parser
    from l2g_core.workflow_support import cli_flags

    flags = cli_flags({k: v for k, v in section.items() if k != "start"})
    argv = [stage, "--manifest", "m", "--out", "o", *extra, *shlex.split(flags)]
    return build_parser(modules=[stage]).parse_args(argv)


def stage_settings(stage, section):
    """The training settings (l2g_core.training.TrainSettings) a config section gives a stage."""
    from l2g_core.training import settings_from_args

    return settings_from_args(stage_args(stage, section, *(["--ground-truth"] if stage == "train-seg" else [])))
