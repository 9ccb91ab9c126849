"""Saliency maps made by the pipeline (issue 24): the MAE and F-measure against hand-computed values,
the cams source's map, `l2g saliency` in shards and `l2g score-saliency`, the readers' --saliency-dir
(L2G's loader, refine, score-pseudo-labels) and what they record, the config, the preflight and the
workflow's wiring (a dry run). The detector source: tests/test_detector.py; a custom dataset without
Sal/ to miou.json: tests/test_custom_dataset.py."""

import json

import numpy as np
import pytest
from PIL import Image

from l2g_core.cli import main
from l2g_core.config import validate_config
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest
from l2g_core.data.torch_data import ImageOptions, LabelledImages
from l2g_core.errors import L2GError
from l2g_core.pipeline import made_with
from l2g_core.preflight import check_saliency
from l2g_core.saliency import cams_saliency
from l2g_core.saliency_metrics import SaliencyScore, image_scores
from l2g_core.stages.summarize_experiment import run_scores

from conftest import cams_from_masks, prepare_tiny_dataset, run_snakemake, tiny_config


# --- the metrics, against values worked out by hand ----------------------------------------------


def test_mae_and_adaptive_f_measure_of_one_image():
    # pred = [0, .2, .8, 1] against [0, 0, 1, 1]: MAE (0 + .2 + .2 + 0) / 4; adaptive threshold
    # 2 x mean = 1 keeps one pixel: P 1, R 1/2, F = 1.3 x 1 x .5 / (.3 x 1 + .5) = .8125; the
    # threshold 204 keeps both foreground pixels alone: max F 1. The 255 pixel is left out.
    scores = image_scores(np.array([[0, 51, 204, 255, 255]], np.uint8), np.array([[0, 0, 3, 1, 255]], np.uint8))
    assert scores["mae"] == pytest.approx(0.1)
    assert scores["f"] == pytest.approx(0.8125)
    assert scores["curve"].max() == pytest.approx(1.0)


def test_the_map_is_stretched_to_its_min_and_max_first():
    # [100, 150, 200] -> [0, .5, 1] against [0, 1, 1]: MAE .5 / 3; threshold 1: P 1, R .5
    scores = image_scores(np.array([[100, 150, 200]], np.uint8), np.array([[0, 1, 1]], np.uint8))
    assert scores["mae"] == pytest.approx(1 / 6)
    assert scores["f"] == pytest.approx(0.8125)


def test_dataset_scores_are_means_of_images_and_the_max_of_the_mean_curve():
    total = SaliencyScore()
    total.add(image_scores(np.array([[0, 51, 204, 255]], np.uint8), np.array([[0, 0, 1, 1]], np.uint8)))
    # all wrong: MAE 1, nothing right above the adaptive threshold (F 0); at threshold 0 both
    # pixels: P .5, R 1, F = .65 / 1.15, which is also the first image's F there
    total.add(image_scores(np.array([[255, 0]], np.uint8), np.array([[0, 1]], np.uint8)))
    result = total.result()
    assert result["mae"] == pytest.approx(0.55)
    assert result["f_adaptive"] == pytest.approx(0.8125 / 2)
    assert result["f_max"] == pytest.approx(0.65 / 1.15)  # beats (1 + 0) / 2 at thresholds 52..204
    assert result["num_images"] == 2 and result["beta2"] == 0.3


# --- the cams source's map -----------------------------------------------------------------------


def test_the_cams_map_is_the_strongest_class_against_the_background_score():
    image = np.zeros((2, 3, 3), np.uint8)
    cams = np.array([[[0.0, 0.2, 0.6], [1.0, 0.0, 0.1]], [[0.0, 0.6, 0.2], [0.0, 0.0, 0.3]]], np.float32)
    plain = cams_saliency(image, cams, threshold=0.2, crf=False)
    fg = cams.max(axis=0)
    expected = np.where(fg + 0.2 > 0, fg / (fg + 0.2), 0.5)
    np.testing.assert_array_equal(plain, np.rint(expected * 255).astype(np.uint8))
    assert plain[0, 2] == plain[0, 1] == round(0.6 / 0.8 * 255)  # class-agnostic: either class's peak
    wider = cams_saliency(image, cams, threshold=0.2, power=0.5, crf=False)
    between = (fg > 0) & (fg < 1)  # 0 and 1 stay where they are
    assert (wider >= plain).all() and (wider[between] > plain[between]).all()
    assert not cams_saliency(image, cams[:0], threshold=0.2, crf=False).any()  # no class: no object


def test_the_cams_map_uses_the_crf_parameters_it_is_given():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    cams = rng.uniform(0, 1, (2, 12, 16)).astype(np.float32)
    plain = cams_saliency(image, cams, threshold=0.4, crf=False)
    # without pairwise terms the CRF's marginals are its unary: the map without the CRF
    flat = cams_saliency(image, cams, threshold=0.4, crf_params={"pos_w": 0.0, "bi_w": 0.0})
    assert np.abs(flat.astype(int) - plain.astype(int)).max() <= 1
    smoothed = cams_saliency(image, cams, threshold=0.4, crf_params={"pos_w": 10.0, "pos_xy_std": 3.0, "bi_w": 0.0})
    assert np.abs(smoothed.astype(int) - plain.astype(int)).max() > 20


# --- l2g saliency and l2g score-saliency ----------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared synthetic dataset with stage-1-like CAMs (the masks, noisy) in cams/."""
    root = tmp_path_factory.mktemp("saliency")
    manifest = prepare_tiny_dataset(root, train=6)
    _, ids, _ = cams_from_masks(root, peak=0.7)
    return root, manifest, ids


def saliency_command(root, manifest, out, *extra):
    return ["saliency", "--manifest", str(manifest), "--source", "cams", "--cams", str(root / "cams"),
            "--out", str(out), "--workers", "1", "--bi-xy-std", "8", *extra]


def test_cams_maps_in_shards_equal_one_run_and_record_their_source(prepared, tmp_path):
    root, manifest, ids = prepared
    for shard in ("1/2", "2/2"):
        assert main(saliency_command(root, manifest, tmp_path / "sharded", "--shard", shard)) == 0
    assert main(["gather", "--manifest", str(manifest), "--split", "train", "--folder", str(tmp_path / "sharded"),
                 "--shards", "2"]) == 0
    assert main(saliency_command(root, manifest, tmp_path / "whole")) == 0
    for image_id in ids:
        sharded = (tmp_path / "sharded" / f"{image_id}.png").read_bytes()
        assert sharded == (tmp_path / "whole" / f"{image_id}.png").read_bytes()
        with Image.open(tmp_path / "whole" / f"{image_id}.png") as image:
            assert image.mode == "L" and image.size == (64, 64)
    settings = json.loads((tmp_path / "sharded/manifest.json").read_text())["settings"]
    assert settings["source"] == "cams" and settings["cams"] == str((root / "cams").resolve())
    assert settings["crf_params"]["bi_xy_std"] == 8 and settings["threshold"] == 0.4


def test_score_saliency_gives_perfect_maps_mae_0_and_f_1_and_says_where_they_came_from(prepared, tmp_path):
    root, manifest, ids = prepared
    layout = VOCLayout(root / "data")
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for image_id in ids:
        Image.fromarray(((layout.load_mask(image_id) > 0) * 255).astype(np.uint8)).save(perfect / f"{image_id}.png")
    out = tmp_path / "score.json"
    assert main(["score-saliency", "--manifest", str(manifest), "--saliency-dir", str(perfect), "--out", str(out),
                 "--workers", "1"]) == 0
    score = json.loads(out.read_text())
    assert score["mae"] == pytest.approx(0.0) and score["f_adaptive"] == pytest.approx(1.0)
    assert score["maps"] == {"dir": str(perfect.resolve()), "source": "folder"}
    assert score["num_images"] == len(ids)
    # the generator's Sal/ maps (the default folder) are good but not perfect
    assert main(["score-saliency", "--manifest", str(manifest), "--out", str(out), "--workers", "1"]) == 0
    score = json.loads(out.read_text())
    assert score["maps"]["dir"] == str((root / "data/Sal").resolve())
    assert 0.0 < score["mae"] < 0.5 and 0.3 < score["f_adaptive"] < 1.0


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "1.5"], "--threshold 1.5: must be in [0, 1]"),
    (["--power", "0"], "--power 0: must be > 0"),
    (["--cams", "/nowhere"], "/nowhere/"),
])
def test_bad_saliency_options_are_one_line(prepared, tmp_path, capsys, extra, message):
    root, manifest, _ = prepared
    assert main(saliency_command(root, manifest, tmp_path / "out", *extra)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # checked before the folder is touched


def test_the_detector_source_without_weights_is_one_line(prepared, tmp_path, capsys):
    _, manifest, _ = prepared
    assert main(["saliency", "--manifest", str(manifest), "--source", "detector", "--out", str(tmp_path)]) == 1
    assert "--source detector needs --weights" in capsys.readouterr().err


# --- the readers: L2G's loader, refine, score-pseudo-labels ---------------------------------------


def write_constant_maps(folder, ids, value, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        Image.fromarray(np.full((size, size), value, np.uint8)).save(folder / f"{image_id}.png")


def test_l2g_loader_reads_the_maps_of_saliency_dir(prepared, tmp_path):
    root, manifest, ids = prepared
    write_constant_maps(tmp_path / "maps", ids, 51)
    dataset = LabelledImages(load_manifest(manifest), "train", 32, saliency=True, saliency_dir=tmp_path / "maps",
                             options=ImageOptions(saliency_norm="none"))
    assert np.allclose(dataset[0]["saliency"].numpy(), 0.2)
    (tmp_path / "maps" / f"{ids[-1]}.png").unlink()
    with pytest.raises(L2GError, match=f"{ids[-1]}.png: saliency map not found \\(1 of {len(ids)}"):
        LabelledImages(load_manifest(manifest), "train", 32, saliency=True, saliency_dir=tmp_path / "maps")


def test_refine_and_its_score_read_saliency_dir_and_record_it(prepared, tmp_path):
    root, manifest, ids = prepared
    write_constant_maps(tmp_path / "maps", ids, 0)  # no object anywhere: every pixel background
    made = {"stage": "saliency", "settings": {"source": "cams", "cams": "x"}}
    (tmp_path / "maps/manifest.json").write_text(json.dumps(made))
    assert main(["refine", "--manifest", str(manifest), "--cams", str(root / "cams"), "--out", str(tmp_path / "labels"),
                 "--background", "saliency", "--threshold", "0.5", "--no-crf", "--saliency-dir",
                 str(tmp_path / "maps"), "--workers", "1"]) == 0
    for image_id in ids:
        assert not np.asarray(Image.open(tmp_path / "labels" / f"{image_id}.png")).any()
    settings = json.loads((tmp_path / "labels/manifest.json").read_text())["settings"]
    assert settings["saliency_maps"] == {"dir": str((tmp_path / "maps").resolve()), "source": "cams", "cams": "x"}
    score = {"mae": 0.5, "f_adaptive": 0.25, "f_max": 0.3, "maps": {"source": "cams"}}
    (tmp_path / "score.json").write_text(json.dumps(score))
    out = tmp_path / "labels/miou.json"
    assert main(["score-pseudo-labels", "--manifest", str(manifest), "--labels", str(tmp_path / "labels"),
                 "--cams", str(root / "cams"), "--saliency-dir", str(tmp_path / "maps"), "--saliency-score",
                 str(tmp_path / "score.json"), "--out", str(out), "--workers", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["miou"] == result["miou_no_crf"] and result["saliency_maps"] == score
    # the baseline from all-zero maps labels everything background: the labels' own score
    assert result["saliency_baseline"]["miou"] == pytest.approx(result["miou"])
    # an experiment's summary reads the maps' score from the file
    assert run_scores({"pseudo_labels": str(out)}) == {
        "pseudo_labels": result["miou"], "saliency_baseline": result["saliency_baseline"]["miou"],
        "saliency_f": 0.25, "saliency_mae": 0.5}


# --- config, preflight, workflow -------------------------------------------------------------------


def demo_with(**saliency):
    config = tiny_config()
    config["datasets"]["demo"]["saliency"] = saliency
    return config


def test_the_detector_source_needs_its_weights_file_in_the_config():
    with pytest.raises(L2GError, match=r"^datasets\.demo\.saliency: missing key 'weights'$"):
        validate_config(demo_with(source="detector"))
    with pytest.raises(L2GError, match=r"datasets\.demo\.saliency\.source: 'poolnet' is not one of"):
        validate_config(demo_with(source="poolnet"))


def test_a_source_change_changes_what_reads_the_maps_and_nothing_else():
    folder, cams = (validate_config(demo_with(source=s, threshold=0.3))["demo"] for s in ("folder", "cams"))
    for product in ("l2g", "pseudo_labels", "pseudo_labels/miou", "saliency/score"):
        assert made_with(folder, product) != made_with(cams, product), product
    for product in ("cls", "control", "l2g_no_saliency", "cls_cams"):
        assert made_with(folder, product) == made_with(cams, product), product
    assert made_with(cams, "saliency")["settings"] == {"source": "cams", "threshold": 0.3}
    assert "cls_cams" in made_with(cams, "saliency")["inputs"]
    # an option of another source is no part of the maps
    other = validate_config(demo_with(source="cams", threshold=0.3, input_size=512))["demo"]
    assert made_with(other, "saliency") == made_with(cams, "saliency")


def test_preflight_accepts_a_root_without_sal_when_the_pipeline_makes_the_maps(tmp_path):
    demo = validate_config(demo_with(source="folder"))["demo"]
    with pytest.raises(L2GError, match=r"has no Sal/ folder.*saliency: \{source: cams\}"):
        check_saliency("mine", demo, tmp_path)
    check_saliency("mine", {**demo, "saliency": {"source": "cams"}}, tmp_path)


def test_the_workflow_makes_the_maps_in_shards_and_its_readers_take_them(tmp_path):
    config = demo_with(source="cams", threshold=0.3)
    # pseudo labels with the saliency's background read the maps too
    config["datasets"]["demo"]["refine"].update(background="saliency", threshold=None, ignore_band=[0.3, 0.3])
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "2", "results/demo/miou.json", config=config)
    shell = [line for line in result.stdout.splitlines() if "l2g " in line]
    saliency = [line for line in shell if "l2g saliency" in line]
    assert len(saliency) == 2 and all("--source cams --cams results/demo/cls_cams --threshold 0.3" in line
                                      for line in saliency)
    assert all("--count 0" in line for line in saliency)  # no network: no GPU
    readers = [line for line in shell if "--saliency-dir results/demo/saliency" in line]
    assert {line.split(" l2g ")[-1].split()[0] for line in readers} == \
        {"train-l2g", "refine", "score-pseudo-labels", "score-saliency"}
    l2g = [line for line in shell if "l2g train-l2g" in line]
    assert sum("--saliency-dir" in line for line in l2g) == 1  # not the run without saliency
    # folder (the default): no saliency job, every reader on ROOT/Sal, the maps scored there
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "2", "results/demo/miou.json", config=tiny_config())
    assert "l2g saliency" not in result.stdout and "--saliency-dir" not in result.stdout
    assert "l2g score-saliency" in result.stdout


def test_the_saliency_sources_experiment_stops_at_the_pseudo_labels(tmp_path):
    result = run_snakemake(tmp_path, "-n", "--cores", "2", "results/demo/experiments/saliency_sources/summary.md",
                           config=tiny_config())
    jobs = result.stdout
    assert "rule saliency:" in jobs and "rule train_seg:" not in jobs and "rule score_pseudo_labels:" in jobs
    assert jobs.count("experiments/saliency_sources/cams-seed") > 0
    assert "experiments/saliency_sources/none-seed0/saliency" not in jobs


def test_the_saliency_rule_on_a_folder_source_is_one_line(tmp_path):
    result = run_snakemake(tmp_path, "-n", "--cores", "1", "results/demo/saliency/manifest.json",
                           config=tiny_config(), check=False)
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert result.returncode == 1 and len(lines) == 1
    assert "datasets.demo.saliency: this run makes no saliency maps (source folder" in lines[0]
