"""Expected numbers (config expect:): the syntax, its checks, and the verdicts each scoring command
writes beside its score (l2g evaluate, score-seg, summarize-experiment); the workflow's strict and
warning runs are in test_workflow.py, the voc ranges in test_real_architectures.py."""

import copy
import json
import re
import shutil

import pytest

from l2g_core.cli import main
from l2g_core.config import load_yaml, resolve_recipes, validate_config
from l2g_core.errors import L2GError
from l2g_core.expectations import judge, text

from conftest import REPO, prepare_tiny_dataset


@pytest.fixture
def config():
    return load_yaml(REPO / "config" / "config.yaml")


@pytest.mark.parametrize("entry, expected", [
    ({"stage": "cams", "min": 0.649, "max": 0.749}, "0.649 <= cams <= 0.749"),
    ({"stage": "cams", "minus": "control_cams", "min": 0.05}, "cams - control_cams >= 0.05"),
    ({"stage": "seg", "divided_by": "supervised", "min": 0.88}, "seg / supervised >= 0.88"),
    ({"stage": "seg", "statistic": "std", "max": 0.03}, "std(seg) <= 0.03"),
])
def test_an_expectation_reads_as_a_line(entry, expected):
    assert text(entry) == expected


def test_a_range_a_margin_a_ratio_and_a_std_are_judged_on_the_scores_they_name():
    values = {"cams": 0.52, "control_cams": 0.46, "seg": 0.70, "supervised": 0.78}
    margin = judge({"stage": "cams", "minus": "control_cams", "min": 0.05, "hint": "h"}, values)
    assert margin["measured"] == pytest.approx(0.06) and margin["holds"] is True
    assert margin["values"] == {"cams": 0.52, "control_cams": 0.46} and margin["hint"] == "h"
    ratio = judge({"stage": "seg", "divided_by": "supervised", "min": 0.88, "hint": "h"}, values)
    assert ratio["measured"] == pytest.approx(0.70 / 0.78) and ratio["holds"] is True
    assert judge({"stage": "seg", "min": 0.72, "hint": "h"}, values)["holds"] is False
    assert judge({"stage": "seg", "max": 0.72, "hint": "h"}, values)["holds"] is True
    # exactly on the bound holds (0.93 - 0.88 is not 0.0499999...)
    assert judge({"stage": "a", "minus": "b", "min": 0.05, "hint": "h"}, {"a": 0.93, "b": 0.88})["holds"] is True
    # a std is judged on the stds, not the scores
    std = judge({"stage": "seg", "statistic": "std", "max": 0.03, "hint": "h"}, values, {"seg": 0.075})
    assert std["measured"] == 0.075 and std["holds"] is False
    # a score that is not there (a std of one run, a divisor of 0) is not measured, neither holds nor fails
    assert judge({"stage": "seg", "statistic": "std", "max": 0.03, "hint": "h"}, values, {"seg": None})["holds"] is None
    assert judge({"stage": "seg", "divided_by": "x", "min": 0.5, "hint": "h"}, {"seg": 0.7, "x": 0.0})["holds"] is None


def test_the_shipped_expectations_are_valid_and_never_come_from_a_recipe(config):
    datasets = validate_config(config)
    assert datasets["demo"]["expect"]["cams"] == [{"minus": "control_cams", "min": 0.05,
                                                   "hint": datasets["demo"]["expect"]["cams"][0]["hint"]}]
    assert {"cams", "cams_train_subset", "pseudo_labels", "seg", "seg_no_crf"} <= set(datasets["voc"]["expect"])
    assert all(e.get("source") and e.get("hint") for entries in datasets["voc"]["expect"].values() for e in entries)
    # coco takes voc's method, never its published figures: its own expectation only
    assert list(resolve_recipes(config)["coco"]["expect"]) == ["seg"]
    seeds = config["experiments"]["seeds"]["expect"]
    assert {"statistic": "std", "max": 0.03} == {k: seeds["seg"][1][k] for k in ("statistic", "max")}


@pytest.mark.parametrize("where, expect, message", [
    ("voc", {"seg": [{"min": 72.1, "hint": "h"}]}, "datasets.voc.expect.seg.0.min: 72.1 is out of range (must be <= 1)"),
    ("voc", {"segs": [{"min": 0.7, "hint": "h"}]}, "datasets.voc.expect.segs: not a score of this run; one of"),
    ("voc", {"no_saliency_cams": [{"min": 0.7, "hint": "h"}]},
     "datasets.voc.expect.no_saliency_cams: not a score of this run"),  # voc has no second L2G run
    ("demo", {"cams_train_subset": [{"min": 0.7, "hint": "h"}]},
     "datasets.demo.expect.cams_train_subset: not a score of this run"),  # the demo has no train_subset
    ("voc", {"seg": [{"hint": "h"}]}, "datasets.voc.expect.seg.0: give min, max or both"),
    ("voc", {"seg": [{"min": 0.7}]}, "datasets.voc.expect.seg.0: missing key 'hint'"),
    ("voc", {"seg": [{"min": 0.8, "max": 0.7, "hint": "h"}]}, "datasets.voc.expect.seg.0: min 0.8 is above max 0.7"),
    ("voc", {"seg": [{"minus": "cams", "divided_by": "cams", "min": 0.1, "hint": "h"}]},
     "datasets.voc.expect.seg.0: give minus or divided_by, not both"),
    ("voc", {"seg": [{"minus": "seg", "min": 0.1, "hint": "h"}]}, "datasets.voc.expect.seg.0.minus: compares seg"),
    ("voc", {"seg": [{"divided_by": "deeplab", "min": 0.1, "hint": "h"}]},
     "datasets.voc.expect.seg.0.divided_by: 'deeplab' is not a score of this run"),
    ("voc", {"seg": [{"statistic": "std", "max": 0.03, "hint": "h"}]},
     "datasets.voc.expect.seg.0: unknown key 'statistic'"),  # a single run has no spread
])
def test_a_mistake_in_expect_is_one_line_naming_it(config, where, expect, message):
    config["datasets"][where]["expect"] = expect
    with pytest.raises(L2GError) as error:
        validate_config(config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("experiment, message", [
    ({"seeds": [0], "expect": {"seg": [{"statistic": "std", "minus": "cams", "max": 0.03, "hint": "h"}]}},
     "experiments.sweep.expect.seg.0.statistic: a std is of the stage's own scores"),
    ({"seeds": [0], "score": "cams", "expect": {"seg": [{"min": 0.5, "hint": "h"}]}},
     "experiments.sweep.expect.seg: not a score of this run (score: cams stops at the CAM scores)"),
    ({"variants": {"v": {"expect": {}}}}, "experiments.sweep.variants.v.expect: a variant keeps its dataset's"),
    ({"seeds": [0], "expect": {"seg": [{"statistic": "median", "max": 0.03, "hint": "h"}]}},
     "experiments.sweep.expect.seg.0.statistic: 'median' is not one of mean, std"),
])
def test_a_mistake_in_an_experiments_expect_is_one_line(config, experiment, message):
    config["experiments"]["sweep"] = experiment
    with pytest.raises(L2GError) as error:
        validate_config(config)
    assert str(error.value).startswith(message)


def test_a_recipe_mistake_in_expect_is_named_where_it_was_written(config):
    config["datasets"]["coco"]["expect"] = {"seg": [{"min": 44.2, "hint": "h"}]}
    with pytest.raises(L2GError, match=re.escape("datasets.coco.expect.seg.0.min: 44.2 is out of range")):
        validate_config(copy.deepcopy(config))


@pytest.fixture(scope="module")
def perfect(tmp_path_factory):
    """A tiny prepared dataset whose "predictions" are its ground truth (mIoU 1)."""
    root = tmp_path_factory.mktemp("expect")
    manifest = prepare_tiny_dataset(root, train=4, val=2)
    for split in ("train", "val"):
        pred = root / f"pred_{split}"
        pred.mkdir()
        for image_id in (root / f"prep/{split}.txt").read_text().split():
            shutil.copy(root / "data/SegmentationClassAug" / f"{image_id}.png", pred / f"{image_id}.png")
    (root / "pred_val/manifest.json").write_text(json.dumps({"settings": {"crf": None}}))
    return root, manifest


def evaluate(perfect, out, *extra):
    root, manifest = perfect
    return main(["evaluate", "--manifest", str(manifest), "--split", "train", "--pred", str(root / "pred_train"),
                 "--out", str(out), "--workers", "1", *extra])


def test_a_scorer_writes_its_verdicts_beside_its_score_and_warns(perfect, tmp_path, capsys):
    expect = [{"stage": "cams", "max": 0.5, "hint": "look at the CAMs", "source": "a paper"},
              {"stage": "cams", "min": 0.9, "hint": "never shown"}]
    out = tmp_path / "miou.json"
    assert evaluate(perfect, out, "--name", "cams", "--expect", json.dumps(expect), "--no-strict-expectations") == 0
    verdicts = json.loads(out.read_text())["expectations"]
    assert [(v["expectation"], v["measured"], v["holds"]) for v in verdicts] == [
        ("cams <= 0.5", 1.0, False), ("cams >= 0.9", 1.0, True)]
    assert verdicts[0]["hint"] == "look at the CAMs" and verdicts[0]["source"] == "a paper"
    lines = capsys.readouterr().out.splitlines()
    assert "WARN expectation fails: cams: cams <= 0.5: measured 1.0000; check: look at the CAMs" in lines
    assert "expectation holds: cams: cams >= 0.9: measured 1.0000" in lines
    # no expectation: an empty list, no line
    assert evaluate(perfect, out) == 0 and json.loads(out.read_text())["expectations"] == []
    assert "expectation" not in capsys.readouterr().out


def test_strict_a_failed_expectation_fails_the_scorer_in_one_line(perfect, tmp_path, capsys, monkeypatch):
    expect = json.dumps([{"stage": "cams", "max": 0.5, "hint": "look at the CAMs"}])
    assert evaluate(perfect, tmp_path / "m.json", "--name", "cams", "--expect", expect, "--strict-expectations") == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "l2g evaluate: error: expectation failed: cams: cams <= 0.5: measured 1.0000; check: look at the CAMs "
        "(strict_expectations)"]
    # the workflow's switch: L2G_STRICT_EXPECTATIONS=1 (what config strict_expectations: true sets)
    monkeypatch.setenv("L2G_STRICT_EXPECTATIONS", "1")
    assert evaluate(perfect, tmp_path / "m.json", "--name", "cams", "--expect", expect) == 1
    monkeypatch.setenv("L2G_STRICT_EXPECTATIONS", "0")
    assert evaluate(perfect, tmp_path / "m.json", "--name", "cams", "--expect", expect) == 0


def test_the_final_score_judges_the_margins_and_writes_every_verdict_of_the_run(perfect, tmp_path, capsys):
    root, manifest = perfect
    cams = tmp_path / "cams.json"
    cams.write_text(json.dumps({"miou": 0.50, "best_threshold": 0.3, "expectations": [
        {"stage": "cams", "expectation": "cams >= 0.4", "measured": 0.5, "holds": True, "values": {"cams": 0.5},
         "hint": "h", "source": None}]}))
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"miou": 0.48, "best_threshold": 0.3, "expectations": []}))
    supervised = tmp_path / "supervised.json"
    supervised.write_text(json.dumps({"miou": 1.0, "miou_no_crf": 1.0, "expectations": []}))
    expect = [{"stage": "cams", "minus": "control_cams", "min": 0.05, "hint": "compare with the control"},
              {"stage": "seg", "divided_by": "supervised", "min": 0.88, "hint": "the labels"},
              {"stage": "seg_no_crf", "min": 0.9, "hint": "before the CRF"}]
    out, verdicts = tmp_path / "miou.json", tmp_path / "expectations.json"
    assert main(["score-seg", "--manifest", str(manifest), "--pred", str(root / "pred_val"), "--out", str(out),
                 "--stage", f"cams={cams}", "--stage", f"control_cams={control}", "--reference",
                 f"supervised={supervised}", "--name", "seg", "--expect", json.dumps(expect), "--verdicts",
                 str(verdicts), "--workers", "1", "--no-strict-expectations"]) == 0
    result = json.loads(out.read_text())
    assert "supervised" not in result["stages"]  # a reference is read, not carried
    assert [(v["expectation"], v["holds"]) for v in result["expectations"]] == [
        ("cams - control_cams >= 0.05", False), ("seg / supervised >= 0.88", True), ("seg_no_crf >= 0.9", True)]
    assert result["expectations"][0]["values"] == {"cams": 0.50, "control_cams": 0.48}
    table = json.loads(verdicts.read_text())
    assert (table["holds"], table["fails"], table["not_measured"]) == (3, 1, 0)
    assert [v["expectation"] for v in table["verdicts"]][0] == "cams >= 0.4"  # the CAM stage's own, read back
    markdown = verdicts.with_suffix(".md").read_text()
    assert "| cams | `cams - control_cams >= 0.05` | 0.0200 (cams 0.5000, control_cams 0.4800) | **fails** |" \
        in markdown
    assert markdown in capsys.readouterr().out  # the table is printed at the end of the job


def test_a_variant_without_a_stage_its_dataset_expects_runs_and_leaves_it_unmeasured(config):
    """A variant cannot change its dataset's expect:, so one that drops the second L2G run is not
    refused for the demo's expectation on no_saliency_cams: that one is not measured in its runs."""
    from l2g_core.experiments import run_settings

    config["experiments"]["sweep"] = {"variants": {"one_l2g": {"train_l2g_no_saliency": None}}}
    run = run_settings(config, validate_config(config), "demo/experiments/sweep/one_l2g")
    assert "no_saliency_cams" in run["expect"] and run["train_l2g_no_saliency"] is None
    verdict = judge({"stage": "no_saliency_cams", "minus": "control_cams", "min": 0.05, "hint": "h"},
                    {"control_cams": 0.4})
    assert verdict["holds"] is None
