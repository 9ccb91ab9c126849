"""The benchmark (bench/, `python -m bench`) in quick mode: tiny inputs, one repeat. It asserts that
both sides of every comparison computed the same result, never how fast they were."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

ITEMS = {"evaluator", "export", "crf", "train_step", "scale", "e2e", "cam_storage", "loader"}  # quick: no makespan


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from bench.run import main

    root = tmp_path_factory.mktemp("bench")
    code = main(["--quick", "--json", str(root / "results.json"), "--out", str(root / "benchmarks.md"),
                 "--workdir", str(root / "work"), "--results", str(root / "no_demo_run")])
    data = json.loads((root / "results.json").read_text())
    return code, {r["item"]: r for r in data["results"]}, (root / "benchmarks.md").read_text()


def test_every_item_runs_and_both_sides_agree(quick_run):
    code, results, _ = quick_run
    assert set(results) == ITEMS
    for item, result in results.items():
        assert "error" not in result, f"{item} failed:\n{result.get('error')}"
        assert result["agree"], f"{item}: the two sides disagree: {result['check']}"
    assert code == 0


def test_the_checks_hold_their_tolerances(quick_run):
    _, results, _ = quick_run
    assert results["evaluator"]["check"]["max_abs_miou_diff"] <= 1e-9
    assert results["export"]["check"]["max_abs_cam_diff"] <= 1 / 255 + 1e-6
    assert results["export"]["check"]["voc_sized_workers_same_files"]
    # the voc networks' training FLOPs per sample: L2G (global + 6 local crops) costs the most
    flops = {kind: f["train_flops_per_sample"] for kind, f in results["loader"]["figures"].items()}
    assert flops["l2g"] > flops["classifier"] > flops["deeplab"] > 1e11
    assert results["crf"]["check"]["refine_1_and_2_workers_identical_files"]
    assert results["crf"]["check"]["crf_step_equals_bare_pydensecrf"]
    assert results["train_step"]["check"]["max_abs_loss_diff"] <= 1e-5
    assert results["train_step"]["check"]["max_abs_target_diff"] <= 1e-5
    # peak memory measured in a fresh process for each size
    assert all(run["evaluate"]["max_rss_mib"] > 0 for run in results["scale"]["figures"]["runs"].values())
    # the stored CAMs are the exact ones to within half a level, the earlier float16 ones closer still
    errors = results["cam_storage"]["check"]["max_abs_error"]
    assert errors["uint8_compressed"] <= 1 / 510 + 1e-6 and errors["float16_uncompressed"] <= 1e-3


def test_markdown_holds_the_summary_table(quick_run):
    _, _, text = quick_run
    assert "## Summary" in text and "| item | measure | pipeline | baseline |" in text
    for title in ("1. Evaluator", "2. CAM export", "3. CRF", "4. L2G training step", "5. Scale", "6. End to end",
                  "7. CAM files at VOC size", "8. Data loaders"):
        assert title in text


def test_test_cams_keep_clear_of_every_threshold():
    """Float16 files and 8-bit PNGs give the same labels only if no level sits on a threshold."""
    from bench.common import forbidden_levels, gt_cam_levels
    from l2g_core.stages.evaluate import DEFAULT_THRESHOLDS

    gt = np.zeros((32, 32), dtype=np.uint8)
    gt[8:20, 6:18], gt[15:30, 20:31], gt[0, :] = 2, 5, 255
    levels = gt_cam_levels(gt, [2, 5], np.random.default_rng(0), DEFAULT_THRESHOLDS)
    assert levels.shape == (2, 32, 32) and levels.dtype == np.uint8
    assert not set(np.unique(levels).tolist()) & forbidden_levels(DEFAULT_THRESHOLDS)
    assert (levels.reshape(2, -1).max(axis=1) == 255).all()  # each map divided by its maximum


def test_dry_run_setup_points_the_voc_dataset_at_a_placeholder_folder(tmp_path):
    from bench.common import Context
    from bench.scale import TARGET_CANDIDATES, default_target, dry_run_command

    ctx = Context(quick=True, workdir=tmp_path, warmup=0, repeats=1, device="cpu", results_dir=tmp_path)
    workdir, command = dry_run_command(ctx, 5, default_target())
    assert default_target() in TARGET_CANDIDATES
    assert "-n" in command and command[-1] == default_target().format(dataset="voc")
    config = yaml.safe_load(Path(command[command.index("--configfile") + 1]).read_text())
    root = Path(config["datasets"]["voc"]["root"])
    assert len((root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()) == 5
    assert workdir.is_dir() and not (workdir / "results").exists()


def test_demo_benchmark_files_are_read_per_stage(tmp_path):
    from bench.e2e import read_benchmarks

    (tmp_path / "train_cls.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\t"
                                            "cpu_time\n83.80\t0:01:23\t921.1\t1\t1\t1\t0\t0\t50\t138.2\n")
    (stage,) = read_benchmarks(tmp_path)
    assert stage["stage"] == "train_cls" and stage["s"] == 83.8 and stage["max_rss_mib"] == 921.1


def test_makespan_reads_job_times_from_the_snakemake_log():
    from bench.makespan import busy_seconds, job_times

    log = "\n".join(["[Tue Dec  1 07:42:21 2026]", "rule train_l2g:", "    jobid: 4", "",
                     "[Tue Dec  1 07:42:23 2026]", "rule train_control:", "    jobid: 5", "",
                     "[Tue Dec  1 07:42:31 2026]", "Finished jobid: 4 (Rule: train_l2g)", "",
                     "[Tue Dec  1 07:42:41 2026]", "Finished jobid: 5 (Rule: train_control)", "",
                     "[Tue Dec  1 07:43:00 2026]", "localrule score_seg:", "    jobid: 6"])
    jobs = job_times(log)
    assert [(rule, (end - start).total_seconds()) for rule, start, end in jobs] == \
        [("train_l2g", 10.0), ("train_control", 18.0)]  # job 6 never finished
    assert busy_seconds([(start, end) for _, start, end in jobs]) == 20.0  # 07:42:21 to 07:42:41


def test_the_gpu_check_refuses_a_machine_without_cuda(capsys):
    import torch

    from bench.run import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the check would run")
    assert main(["--gpu"]) == 1
    assert capsys.readouterr().err.strip() == "python -m bench --gpu: no CUDA device is visible to this process"
