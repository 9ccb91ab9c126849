"""Real Snakemake runs of the workflow on a tiny synthetic dataset."""

import json

import torch

from conftest import run_snakemake


def test_prepare_rule_builds_the_demo_dataset_and_manifest(tmp_path):
    run_snakemake(tmp_path, "--cores", "2", "results/demo/data/manifest.json")
    manifest = json.loads((tmp_path / "results/demo/data/manifest.json").read_text())
    assert manifest["name"] == "demo" and manifest["kind"] == "synthetic"
    assert manifest["num_classes"] == 6 and len(manifest["class_names"]) == 6
    assert manifest["has_saliency"] is True
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["num_images"] + train["skipped_without_class"] == 12
    assert val["num_images"] == 4 and val["has_ground_truth"] is True
    assert (tmp_path / "results/demo/data/synthetic/JPEGImages").is_dir()
    labels = json.loads((tmp_path / "results/demo/data/labels.json").read_text())
    ids = (tmp_path / "results/demo/data/train.txt").read_text().split()
    assert all(labels[i] for i in ids)
    for stage in ("make_synthetic", "prepare"):
        assert (tmp_path / f"results/demo/logs/{stage}.log").is_file()
        assert (tmp_path / f"results/demo/benchmarks/{stage}.tsv").is_file()
    # Finished outputs are cached: a second run has nothing to do.
    again = run_snakemake(tmp_path, "--cores", "2", "results/demo/data/manifest.json")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_changing_the_generator_setting_reruns_the_data_stages(tmp_path):
    run_snakemake(tmp_path, "--cores", "2", "results/demo/data/manifest.json")
    from conftest import tiny_config
    config = tiny_config()
    config["datasets"]["demo"]["synthetic"]["seed"] = 1
    dry = run_snakemake(tmp_path, "-n", "--cores", "2", "results/demo/data/manifest.json", config=config)
    assert "make_synthetic" in dry.stdout and "prepare" in dry.stdout


def test_cam_and_pseudo_label_stages_run_through_snakemake(tmp_path):
    targets = [f"results/demo/{kind}/miou.json" for kind in ("cls_cams", "control_cams", "cams", "pseudo_labels")]
    run_snakemake(tmp_path, "--cores", "2", *targets)
    results = tmp_path / "results/demo"
    for kind in ("cls_cams", "control_cams", "cams"):
        metrics = json.loads((results / kind / "miou.json").read_text())
        assert metrics["kind"] == "cam" and metrics["split"] == "train" and 0 <= metrics["miou"] <= 1
        export = json.loads((results / kind / "manifest.json").read_text())
        assert export["num_images"] == metrics["num_images"] == len(list((results / kind).glob("*.npz")))
    pseudo = json.loads((results / "pseudo_labels/miou.json").read_text())
    assert set(pseudo) >= {"miou", "miou_no_crf", "saliency_baseline", "threshold", "per_class_iou"}
    assert pseudo["threshold"] == json.loads((results / "cams/miou.json").read_text())["best_threshold"]
    assert len(list((results / "pseudo_labels").glob("*.png"))) == pseudo["num_images"]
    # the control classifier continues stage 1 for as many epochs as L2G trains
    control = torch.load(results / "control/model.pt", weights_only=True)["settings"]
    l2g = torch.load(results / "l2g/model.pt", weights_only=True)["settings"]
    assert control["init_from"] == str((results / "cls/model.pt").resolve())
    assert control["epochs"] == l2g["epochs"] and control["lr"] == l2g["lr"]
