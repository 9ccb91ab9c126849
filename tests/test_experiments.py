"""Experiments: sweeps as Snakemake targets that share every upstream output a variant leaves alone."""

import json
import os
import re
import shutil
import statistics

import pytest
import yaml

from conftest import REPO, run_snakemake, tiny_config
from l2g_core.cli import main
from l2g_core.config import validate_config
from l2g_core.errors import L2GError
from l2g_core.experiments import run_names, run_overrides, run_settings
from l2g_core.pipeline import made_with, product_of
from test_workflow import planned_jobs


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def demo_with(config, **sections):
    demo = json.loads(json.dumps(config["datasets"]["demo"]))
    for section, keys in sections.items():
        demo[section] = {**demo[section], **keys}
    return demo


@pytest.mark.parametrize("path, product", [
    ("cls/model.pt", "cls"), ("data/manifest.json", "data"), ("cams/manifest-shard-1-of-2.json", "cams"),
    ("cams/miou.json", "cams/miou"), ("cams/miou_train_subset.json", "cams/miou_train_subset"),
    ("pseudo_labels/miou.json", "pseudo_labels/miou"), ("seg/model.pt", "seg"),
    ("seg/logits/manifest-shard-2-of-2.json", "seg/logits"), ("supervised/pred/manifest.json", "supervised/pred"),
    ("supervised/miou.json", "supervised/miou"), ("miou.json", "seg/miou"), ("miou.csv", "seg/miou"),
])
def test_every_path_belongs_to_the_output_that_makes_it(path, product):
    assert product_of(path) == product


def test_a_setting_changes_its_output_and_every_output_after_it_only(config):
    demo = config["datasets"]["demo"]
    kd5 = demo_with(config, train_l2g={"kd_weight": 5})
    same = ("data", "cls", "control", "cls_cams", "cls_cams/miou", "control_cams/miou")
    # both DeepLabs start from the L2G classifier (init: l2g): the supervised one changes with it
    changed = ("l2g", "l2g_no_saliency", "cams", "no_saliency_cams/miou", "pseudo_labels", "seg", "seg/pred",
               "seg/miou", "supervised", "supervised/miou")
    assert all(made_with(kd5, p) == made_with(demo, p) for p in same)
    assert all(made_with(kd5, p) != made_with(demo, p) for p in changed)
    # the labelling's CRF is not the network's: the logits stay, the labels change
    no_crf = demo_with(config, predict_seg={"crf": False})
    assert made_with(no_crf, "seg/logits") == made_with(demo, "seg/logits")
    assert made_with(no_crf, "seg/pred") != made_with(demo, "seg/pred")
    # how the jobs run (threads, shards, GPUs) makes the same files
    assert made_with({**demo, "jobs": {**demo["jobs"], "shards": 7}}, "seg/miou") == made_with(demo, "seg/miou")


def test_runs_are_every_variant_with_every_seed_and_set_the_seeds_named():
    experiment = {"variants": {"a": {"train_l2g": {"kd_weight": 5}}, "b": {}}, "seeds": [0, 3],
                  "seed_sections": ["train_l2g"]}
    assert run_names(experiment) == {"a-seed0": ("a", 0), "a-seed3": ("a", 3), "b-seed0": ("b", 0),
                                     "b-seed3": ("b", 3)}
    assert run_overrides(experiment, "a", 3) == {"train_l2g": {"kd_weight": 5, "seed": 3}}
    assert run_names({"seeds": [1, 2]}) == {"seed1": (None, 1), "seed2": (None, 2)}
    assert run_overrides({"seeds": [1]}, None, 1) == {s: {"seed": 1} for s in ("train_cls", "train_l2g", "train_seg")}


def test_a_run_is_its_dataset_with_the_variant_on_top(config):
    datasets = validate_config(config)
    kd5 = run_settings(config, datasets, "demo/experiments/kd_weight/kd5")
    assert kd5 == demo_with(config, train_l2g={"kd_weight": 5})
    seed2 = run_settings(config, datasets, "demo/experiments/seeds/seed2")
    assert [seed2[s]["seed"] for s in ("train_cls", "train_l2g", "train_seg")] == [2, 2, 2]


@pytest.mark.parametrize("change, expected", [
    ({"variants": {"bad": {"train_l2g": {"kd_weight": "big"}}}},
     "experiments.sweep.variants.bad.train_l2g.kd_weight: expected number, got 'big'"),
    ({"variants": {"big": {"train_l2g": {"crop_size": 512}}}},
     "datasets.demo/experiments/sweep/big.train_l2g.crop_size: 512 is larger than input_size 128"),
])
def test_a_mistake_in_a_variant_is_named_where_it_was_written(config, change, expected):
    config["experiments"]["sweep"] = change
    with pytest.raises(L2GError, match="^" + re.escape(expected)):
        run_settings(config, validate_config(config), f"demo/experiments/sweep/{next(iter(change['variants']))}")


@pytest.mark.parametrize("experiment, expected", [
    ({"variants": {"v": {"root": "/data"}}}, "experiments.sweep.variants.v.root: a variant changes the method"),
    ({"variants": {"seed9": {}}}, "experiments.sweep.variants.seed9: a variant name may not start with 'seed'"),
    ({"description": "nothing to sweep"}, "experiments.sweep: "),
    ({"seeds": [1], "score": "deeplab"}, "experiments.sweep.score: 'deeplab' is not one of final, cams, pseudo_labels"),
])
def test_the_config_check_refuses_a_bad_experiment_in_one_line(config, experiment, expected):
    config["experiments"]["sweep"] = experiment
    with pytest.raises(L2GError) as error:
        validate_config(config)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def write_metrics(folder, run, cams, deeplab, supervised):
    """A run's final miou.json (with its stages) and supervised/miou.json, as score-seg writes them."""
    (folder / run).mkdir(parents=True)
    final = {"miou": deeplab, "miou_no_crf": deeplab - 0.02, "crf": True,
             "stages": {"cams": {"miou": cams, "best_threshold": 0.3},
                        "pseudo_labels": {"miou": cams + 0.1, "miou_no_crf": cams + 0.05, "saliency_baseline": 0.5}}}
    (folder / run / "miou.json").write_text(json.dumps(final))
    (folder / run / "supervised.json").write_text(json.dumps({"miou": supervised, "miou_no_crf": supervised,
                                                               "crf": False, "stages": {}}))
    return {"final": str(folder / run / "miou.json"), "supervised": str(folder / run / "supervised.json")}


def test_the_summary_gives_mean_and_std_per_stage_and_variant_and_every_run(tmp_path):
    values = {("a", 0): (0.40, 0.60, 0.70), ("a", 1): (0.44, 0.66, 0.72), ("a", 2): (0.42, 0.63, 0.74),
              ("b", 0): (0.50, 0.61, 0.70)}
    runs = {f"{v}-seed{s}": {"variant": v, "seed": s, "metrics": write_metrics(tmp_path, f"{v}{s}", *numbers)}
            for (v, s), numbers in values.items()}
    out = tmp_path / "summary"
    assert main(["summarize-experiment", "--name", "sweep", "--dataset", "demo", "--runs", json.dumps(runs),
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    cams_a = summary["stages"]["cams"]["a"]
    assert cams_a["n"] == 3 and cams_a["values"] == [0.40, 0.44, 0.42]
    assert cams_a["mean"] == pytest.approx(0.42) and cams_a["std"] == pytest.approx(statistics.stdev([.40, .44, .42]))
    assert summary["stages"]["cams"]["b"] == {"n": 1, "mean": 0.50, "std": None, "values": [0.50]}
    assert summary["stages"]["deeplab"]["a"]["mean"] == pytest.approx(0.63)
    assert summary["stages"]["deeplab_no_crf"]["a"]["mean"] == pytest.approx(0.61)
    assert summary["stages"]["pseudo_labels_no_crf"]["b"]["mean"] == pytest.approx(0.55)
    assert summary["stages"]["saliency_baseline"]["a"]["values"] == [0.5, 0.5, 0.5]
    assert summary["stages"]["supervised"]["a"]["values"] == [0.70, 0.72, 0.74]
    assert "supervised_no_crf" not in summary["stages"]  # no CRF ran: no second figure
    assert list(summary["stages"])[:2] == ["cams", "saliency_baseline"]  # pipeline order
    table = (out / "summary.md").read_text()
    assert "| L2G CAMs | 42.0 ± 2.0 (n=3) | 50.0 (n=1) |" in table
    assert "| a-seed1 | 44.0 |" in table
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0] == "stage,variant,n,mean,std,seed0,seed1,seed2"
    assert rows[1] == "cams,a,3,0.420000,0.020000,0.400000,0.440000,0.420000"
    assert rows[2] == "cams,b,1,0.500000,,0.500000,,"
    assert (out / "summary.png").stat().st_size > 10_000


def test_the_summary_judges_the_experiments_expectations_on_the_means_and_the_spread(tmp_path, capsys):
    values = {0: (0.40, 0.60, 0.70), 1: (0.44, 0.66, 0.72), 2: (0.42, 0.75, 0.74)}
    runs = {f"seed{s}": {"variant": None, "seed": s, "metrics": write_metrics(tmp_path, f"r{s}", *numbers)}
            for s, numbers in values.items()}
    expect = [{"stage": "pseudo_labels", "minus": "cams", "min": 0.05, "hint": "the labels"},
              {"stage": "seg", "divided_by": "supervised", "min": 0.88, "hint": "DeepLab"},
              {"stage": "seg", "statistic": "std", "max": 0.03, "hint": "a seed collapsed"},
              {"stage": "cams_train_subset", "min": 0.5, "hint": "not in these runs"}]
    out = tmp_path / "summary"
    argv = ["summarize-experiment", "--name", "seeds", "--dataset", "demo", "--runs", json.dumps(runs),
            "--out", str(out), "--expect", json.dumps(expect)]
    assert main([*argv, "--no-strict-expectations"]) == 0
    verdicts = json.loads((out / "summary.json").read_text())["expectations"]
    deeplab = statistics.fmean([0.60, 0.66, 0.75])
    assert [(v["variant"], v["expectation"], v["holds"]) for v in verdicts] == [
        ("recipe", "pseudo_labels - cams >= 0.05", True), ("recipe", "seg / supervised >= 0.88", True),
        ("recipe", "std(seg) <= 0.03", False), ("recipe", "cams_train_subset >= 0.5", None)]
    assert verdicts[1]["measured"] == pytest.approx(deeplab / 0.72, abs=1e-9)  # the means' ratio; seg is DeepLab
    assert verdicts[2]["measured"] == pytest.approx(statistics.stdev([0.60, 0.66, 0.75]))
    table = (out / "summary.md").read_text()
    assert "## Expectations" in table and "2 hold, 1 fail, 1 not measured" in table
    assert "| recipe | seg | `std(seg) <= 0.03` | 0.0755 | **fails** | a seed collapsed |" in table
    assert "recipe: WARN expectation fails: seg: std(seg) <= 0.03: measured 0.0755; check: a seed collapsed" \
        in capsys.readouterr().out
    # strict: the same summary, and the command fails in one line naming the variant
    assert main([*argv, "--strict-expectations"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "l2g summarize-experiment: error: expectation failed: recipe: seg: std(seg) <= 0.03: measured 0.0755; "
        "check: a seed collapsed (strict_expectations)"]


def test_summary_refuses_runs_that_are_not_json(tmp_path, capsys):
    assert main(["summarize-experiment", "--name", "x", "--dataset", "demo", "--runs", "{seed0:", "--out",
                 str(tmp_path)]) == 1
    assert "--runs: not valid JSON" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_stage_two_sweep_plans_stage_one_once_and_a_seed_sweep_once_per_seed(tmp_path):
    config = tiny_config()
    kd = planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "2", "results/demo/experiments/kd_weight/summary.md",
                                    config=config))
    # kd20 is the demo's own setting: its run is the dataset's; kd5 and kd10 train L2G (with and
    # without saliency) again; stage 1, the control and the data once; no pseudo labels (score: cams)
    assert kd["train_cls"] == 1 and kd["train_control"] == 1 and kd["prepare"] == 1
    assert kd["train_l2g"] == 3 * 2 and kd["summarize_experiment"] == 1
    assert not {"refine", "train_seg"} & set(kd)
    both = planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "2", "results/demo/experiments/kd_weight/summary.md",
                                      "results/demo/experiments/seeds/summary.md", config=config))
    assert both["train_cls"] == 3 and both["train_seg"] == 3 * 2 and both["summarize_experiment"] == 2


@pytest.fixture
def finished_copy(finished_demo, tmp_path):
    """A copy of the finished tiny demo (modification times kept, so nothing is out of date)."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_demo, workdir, symlinks=True)
    return workdir


def test_the_record_beside_the_outputs_keeps_what_an_until_run_did_not_rebuild(finished_copy):
    config = tiny_config()
    config["datasets"]["demo"]["refine"]["threshold"] = 0.4
    run_snakemake(finished_copy, "--cores", "2", "--until", "train_l2g", "--", "results/demo/miou.json", config=config)
    record = yaml.safe_load((finished_copy / "results/demo/config.yaml").read_text())
    assert record["outputs"]["pseudo_labels"]["settings"]["threshold"] == 0.25  # as it was made
    l2g = config["datasets"]["demo"]["train_l2g"]
    assert record["outputs"]["l2g"]["settings"] == {k: v for k, v in l2g.items() if k != "start"}
    assert record["outputs"]["l2g"]["inputs"] == {"data": "results/demo", "cls": "results/demo"}  # start: stage1


def test_a_crf_sweep_reuses_every_network_and_summarizes_both_variants(finished_copy):
    config = tiny_config()
    config["experiments"] = {"crf": config["experiments"]["crf"]}
    result = run_snakemake(finished_copy, "--cores", "2", "results/demo/experiments/crf/summary.md", config=config)
    ran = planned_jobs(result)
    # the crf variant is the demo's own run; without the CRF: new pseudo labels and the DeepLab
    # trained on them, while the supervised network's logits are relabelled without retraining
    assert ran == {"refine": 2, "gather": 3, "score_pseudo_labels": 1, "train_seg": 1, "predict_seg": 2,
                   "label_seg": 4, "score_seg": 1, "score_supervised": 1, "summarize_experiment": 1}
    results = finished_copy / "results/demo"
    summary = json.loads((results / "experiments/crf/summary.json").read_text())
    base = json.loads((results / "miou.json").read_text())
    run = json.loads((results / "experiments/crf/no_crf/miou.json").read_text())
    assert summary["stages"]["deeplab"]["crf"]["values"] == [base["miou"]]
    assert summary["stages"]["deeplab"]["no_crf"]["values"] == [run["miou"]]
    assert run["crf"] is False and "no_crf" not in summary["stages"]["deeplab_no_crf"]
    assert summary["runs"]["no_crf"]["metrics"]["final"] == "results/demo/experiments/crf/no_crf/miou.json"
    assert summary["runs"]["crf"]["metrics"]["final"] == "results/demo/miou.json"
    # the run read the networks it shares from the demo's folders, and made none of its own
    assert not (results / "experiments/crf/no_crf/cls").exists()
    assert not (results / "experiments/crf/no_crf/supervised/model.pt").exists()
    assert (results / "experiments/crf/summary.md").read_text().startswith("# Experiment crf on demo")
    # each output's record names the folder every input came from
    record = yaml.safe_load((results / "experiments/crf/no_crf/config.yaml").read_text())
    assert record["outputs"]["pseudo_labels"]["settings"]["crf"] is False
    assert record["outputs"]["pseudo_labels"]["inputs"] == {"data": "results/demo", "cams": "results/demo"}
    assert record["outputs"]["seg"]["inputs"]["pseudo_labels"] == "results/demo/experiments/crf/no_crf"
    assert "cls" not in record["outputs"]


def test_docs_tables_puts_each_summary_in_its_block_and_leaves_a_block_not_made_yet(tmp_path, capsys):
    import docs_tables

    summary = tmp_path / "results/demo/experiments/seeds/summary.md"
    summary.parent.mkdir(parents=True)
    summary.write_text("# Experiment seeds on demo\n\n| stage | recipe |\n|---|---|\n| DeepLab | 69.1 ± 1.2 (n=3) |\n")
    doc = tmp_path / "doc.md"
    marker = "<!-- experiment: results/demo/experiments/seeds/summary.md -->\n"
    doc.write_text(f"Intro.\n\n{marker}old table\n<!-- end experiment -->\n\nAfter.\n")
    assert docs_tables.main([str(doc), "--results-root", str(tmp_path)]) == 0
    assert doc.read_text() == (f"Intro.\n\n{marker}| stage | recipe |\n|---|---|\n| DeepLab | 69.1 ± 1.2 (n=3) |\n"
                               "<!-- end experiment -->\n\nAfter.\n")
    # a second block whose summary is not made yet: named, and left as it is
    before = doc.read_text() + "<!-- experiment: results/demo/experiments/crf/summary.md -->\n(not yet)\n" \
        "<!-- end experiment -->\n"
    doc.write_text(before)
    assert docs_tables.main([str(doc), "--results-root", str(tmp_path)]) == 0
    assert "results/demo/experiments/crf/summary.md not made yet" in capsys.readouterr().err
    assert doc.read_text() == before


def fake_run(root):
    """A finished run's files under root/results/demo, as score-seg, score-pseudo-labels and
    Snakemake's benchmarks write them (the numbers chosen by hand)."""
    results = root / "results/demo"
    stages = {name: {"miou": value, "best_threshold": 0.3, "split": "train", "num_images": 300,
                     "file": f"results/demo/{name}/miou.json"}
              for name, value in (("cls_cams", 0.449), ("control_cams", 0.458), ("cams", 0.468),
                                  ("no_saliency_cams", 0.506))}
    stages["pseudo_labels"] = {"miou": 0.602, "miou_no_crf": 0.573, "saliency_baseline": 0.589, "split": "train",
                               "num_images": 300, "file": "results/demo/pseudo_labels/miou.json"}
    (results / "pseudo_labels").mkdir(parents=True)
    (results / "pseudo_labels/miou.json").write_text(json.dumps({"miou": 0.602, "ignored_fraction": 0.096}))
    (results / "supervised").mkdir()
    (results / "miou.json").write_text(json.dumps({"miou": 0.698, "miou_no_crf": 0.652, "split": "val",
                                                   "stages": stages}))
    (results / "supervised/miou.json").write_text(json.dumps({"miou": 0.778, "miou_no_crf": 0.747, "split": "val"}))
    (results / "expectations.json").write_text(json.dumps({"holds": 1, "fails": 1, "not_measured": 0, "verdicts": [
        {"expectation": "cams - control_cams >= 0.05", "holds": False},
        {"expectation": "seg / supervised >= 0.88", "holds": True}]}))
    benchmarks = results / "benchmarks"
    benchmarks.mkdir()
    for name, seconds, end in (("train_cls", 174.0, 1174), ("export_cams-1-of-2", 30.5, 1300),
                               ("export_cams-2-of-2", 29.5, 1301), ("score_seg", 2.0, 2013),
                               ("summarize_seeds", 5.0, 9000)):
        path = benchmarks / f"{name}.tsv"
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t10.0\n")
        os.utime(path, (end, end))
    return results


def test_docs_tables_fills_a_run_its_comparisons_and_its_times_from_the_files_they_name(tmp_path):
    import docs_tables

    fake_run(tmp_path)
    doc = tmp_path / "README.md"
    doc.write_text("Intro.\n\n<!-- run: results/demo -->\n*(not generated yet)*\n<!-- end run -->\n\n"
                   "<!-- run-times: results/demo -->\nold\n<!-- end run-times -->\nAfter.\n")
    assert docs_tables.main([str(doc), "--results-root", str(tmp_path)]) == 0
    text = doc.read_text()
    assert "| plain CAMs, stage 1 (`cls_cams/miou.json`) | train | 44.9 |" in text
    assert "| L2G CAMs, without saliency (`no_saliency_cams/miou.json`) | train | 50.6 |" in text
    assert "| saliency baseline: saliency > threshold, class from the L2G CAM (`pseudo_labels/miou.json`: " \
           "`saliency_baseline`) | train | 58.9 |" in text
    assert "| pseudo labels (`pseudo_labels/miou.json`: `miou`; 9.6% of pixels left at 255 (`ignored_fraction`)) " \
           "| train | 60.2 |" in text
    assert "| **DeepLab on the pseudo labels** (`miou.json`: `miou`; `miou_no_crf` 65.2) | val | **69.8** |" in text
    assert "| the same DeepLab on the ground truth (`supervised/miou.json`: `miou`; `miou_no_crf` 74.7) | val | " \
           "77.8 |" in text
    # the comparisons are computed, with their numbers
    assert "L2G's CAMs minus the control's (the same start and budget without the transfer): +1.0 points with " \
           "saliency, +4.8 points without." in text
    assert "reaches 89.7% of the same DeepLab on the ground truth (69.8 / 77.8; 87.3% without the CRF)" in text
    assert "1 hold, 1 fail, 0 not measured (fails: `cams - control_cams >= 0.05`)." in text
    # the times: shards summed, an experiment's summary left out, the span from the first start to the last end
    assert "4 jobs (`results/demo/benchmarks/*.tsv`, one per job): 16 min 53 s from the first job's start to the " \
           "last one's end, 3 min 56 s of job time in all." in text
    assert "| train_cls | 1 | 174 |\n| export_cams | 2 | 60 |\n| score_seg | 1 | 2 |\n<!-- end run-times -->" in text
    assert text.startswith("Intro.\n\n<!-- run: results/demo -->\nmIoU in percent") and text.endswith("After.\n")
    # run again: nothing changes
    assert docs_tables.main([str(doc), "--results-root", str(tmp_path)]) == 0 and doc.read_text() == text


def test_docs_tables_leaves_a_run_not_made_yet_and_names_it(tmp_path, capsys):
    import docs_tables

    doc = tmp_path / "README.md"
    before = "<!-- run: results/demo -->\n*(not generated yet)*\n<!-- end run -->\n" \
             "<!-- run-times: results/demo -->\n*(not generated yet)*\n<!-- end run-times -->\n"
    doc.write_text(before)
    assert docs_tables.main([str(doc), "--results-root", str(tmp_path)]) == 0
    assert doc.read_text() == before
    err = capsys.readouterr().err
    assert "results/demo not made yet (snakemake --cores 2): its run blocks are left as they are" in err
    assert "its run-times blocks are left as they are" in err


def test_docs_tables_counts_the_jobs_of_a_dry_run_in_an_empty_folder(tmp_path):
    import docs_tables

    doc = tmp_path / "README.md"
    doc.write_text("<!-- jobs: snakemake -n --cores 2 -->\n38 jobs\n<!-- end jobs -->\n")
    assert docs_tables.main([str(doc), "--results-root", str(tmp_path)]) == 0
    line = doc.read_text().splitlines()[1]
    counts = dict(re.findall(r"(\w+) (\d+)(?=[,)])", line))
    assert line.startswith(f"**{sum(map(int, counts.values()))} jobs** (`snakemake -n --cores 2` in an empty folder")
    # the shipped demo: 2 shards of each of the 4 CAM exports, the refinement and the 2 DeepLab predictions
    assert counts["export_cams"] == "8" and counts["refine"] == "2" and counts["train_seg"] == "2"
    assert counts["all"] == "1" and counts["report"] == "1"
