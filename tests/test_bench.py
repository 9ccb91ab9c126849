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

ITEMS = {"evaluator", "export", "crf", "train_step", "scale", "e2e", "cam_storage", "loader",
         "gpu_input"}  # quick: no makespan


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
    # the GPU input path, its device step on this CPU: the CPU path's samples to the bit, and a rate
    # per core that counts the worker's and the device step's time
    for kind, f in results["gpu_input"]["figures"].items():
        assert f["max_grey_level_diff"] == 0 and f["saliency_equal"], kind
        assert f["gpu_path_samples_per_s_per_core"] < min(f["gpu_path_worker_samples_per_s"],
                                                          1 / f["gpu_path_device_step_cpu_s_per_sample"])
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
                  "7. CAM files at VOC size", "8. Data loaders", "8b. GPU input path"):
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


def test_the_gpu_check_refuses_a_machine_without_cuda_and_changes_nothing(capsys):
    import torch

    from bench.run import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the check would run")
    files = [REPO / "bench" / "results.json", REPO / "docs" / "benchmarks.md"]  # the default outputs
    before = [path.read_bytes() for path in files]
    assert main(["--gpu"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "python -m bench --gpu: no CUDA device is visible to this process\n"
    assert [path.read_bytes() for path in files] == before


def fake_gpu_result(seconds):
    return {"item": "gpu", "agree": True, "setup": {"device": "NVIDIA H100 80GB HBM3", "card": "H100 SXM"},
            "rows": [{"measure": "L2G update, voc recipe", "pipeline": f"{seconds} s bf16", "reference": "",
                      "ratio": None, "target": "MFU >= 40% of bf16 peak", "met": True, "check": ""}]}


def test_the_gpu_check_adds_to_the_results_and_the_page(tmp_path, monkeypatch):
    # a CUDA machine pretended: `--gpu` must keep every CPU item and its run, and add its own
    import torch

    import bench.gpu
    from bench import common
    from bench.run import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common, "machine_info", lambda: {
        "cores": 16, "cores_usable": 16, "cpu": "a GPU box's CPU", "memory_gib": 128, "gpu": "NVIDIA H100 80GB HBM3",
        "torch_threads": 16, "python": "3.11", "torch": torch.__version__, "numpy": np.__version__,
        "platform": "linux", "load_average_at_start": [0.0, 0.0, 0.0]})
    results, page = tmp_path / "results.json", tmp_path / "benchmarks.md"
    results.write_bytes((REPO / "bench" / "results.json").read_bytes())
    old = json.loads(results.read_text())
    old_page = (REPO / "docs" / "benchmarks.md").read_text()
    assert "gpu" not in [r["item"] for r in old["results"]]

    for seconds in (0.5, 0.25):  # a second check replaces the first's item, the CPU items stay
        monkeypatch.setattr(bench.gpu, "run", lambda ctx, seconds=seconds: fake_gpu_result(seconds))
        assert main(["--gpu", "--json", str(results), "--out", str(page), "--workdir", str(tmp_path / "work")]) == 0
        data = json.loads(results.read_text())
        assert [r["item"] for r in data["results"]] == [r["item"] for r in old["results"]] + ["gpu"]
        assert data["results"][:-1] == old["results"]  # the CPU items untouched, their runs named as before
        assert data["meta"]["machine"] == old["meta"]["machine"]  # the page's machine is still the CPU one
        assert data["meta"]["runs"][:len(old["meta"]["runs"])] == old["meta"]["runs"]
        assert data["results"][-1]["run"] == len(data["meta"]["runs"])
        assert data["meta"]["runs"][-1]["machine"]["gpu"] == "NVIDIA H100 80GB HBM3"
        text = page.read_text()
        assert f"{seconds} s bf16" in text and "not run yet" not in text
        assert "on another machine (16 cores, a GPU box's CPU, GPU: NVIDIA H100 80GB HBM3)" in text
        for line in old_page.splitlines():  # every CPU item's section and row is still there
            if line.startswith("### ") and "GPU check" not in line:
                assert line in text
            if line.startswith("| 1. ") or line.startswith("| 8. "):
                assert line in text
    assert len(data["meta"]["runs"]) == len(old["meta"]["runs"]) + 2


def test_the_page_lists_what_the_gpu_check_must_reach_before_it_runs():
    from bench import report
    from bench.gpu import TARGETS

    text = (REPO / "docs" / "benchmarks.md").read_text()
    data = json.loads((REPO / "bench" / "results.json").read_text())
    assert text == report.markdown(data)  # the page is the JSON's, rendered
    if any(r["item"] == "gpu" for r in data["results"]):
        pytest.skip("the GPU check has run: its section holds its figures")
    assert "### 10. GPU check (python -m bench --gpu): not run yet" in text
    for part, target in TARGETS:
        assert f"| {part} | {target} |" in text
    assert "MFU >= 40% of the card's dense bf16 peak" in text and text.count("GPU-bound") >= 2


@pytest.mark.parametrize("name, memory_gib, card", [
    ("NVIDIA H100 80GB HBM3", 79.2, "H100 SXM"),
    ("NVIDIA H100 PCIe", 79.2, "H100 PCIe"),
    ("NVIDIA H100 NVL", 87.5, "H100 NVL"),
    ("NVIDIA H100", 87.5, "H100 NVL"),  # a bare name: the 94 GB of memory say NVL
    ("NVIDIA H200", 131.0, "H200"),
    ("NVIDIA H200 NVL", 131.0, "H200 NVL"),
    ("NVIDIA A100-SXM4-40GB", 39.4, "A100 SXM4 40GB"),
    ("NVIDIA A100-SXM4-80GB", 79.2, "A100 SXM4 80GB"),
    ("NVIDIA A100-PCIE-40GB", 39.4, "A100 PCIe 40GB"),
    ("NVIDIA A100 80GB PCIe", 79.2, "A100 PCIe 80GB"),
    ("NVIDIA A10", 22.0, "A10"),
    ("Tesla V100-SXM2-16GB", 15.8, None),
])
def test_the_gpu_check_knows_the_exact_card(name, memory_gib, card):
    from bench.gpu import CARDS, card_name

    assert card_name(name, memory_gib) == card
    if card:
        assert CARDS[card]["bf16"] > CARDS[card]["tf32"] > CARDS[card]["fp32"]
    assert CARDS["H100 SXM"]["bf16"] > CARDS["H100 NVL"]["bf16"] > CARDS["H100 PCIe"]["bf16"]


def test_the_gpu_check_measures_the_trainers_configuration(tmp_path):
    # built on the CPU (the update itself needs the GPU's time): the stage's runtime setup and
    # precision, its optimizer, the recipe's frozen layers; the FLOPs of that very update
    import torch

    from bench.gpu import l2g_trainer, l2g_update_flops
    from bench.loader import training_flops

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for precision, tf32 in (("fp32", False), ("bf16", True)):
            _, args, trainer = l2g_trainer("cpu", precision, tmp_path)
            assert trainer.settings.precision == precision and torch.backends.cudnn.allow_tf32 is tf32
            assert (args.input_size, args.crop_size, args.num_crops, args.batch_size) == (448, 320, 6, 3)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    net = trainer.models["global"]
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert any(".bn" in name or "bn_" in name for name in frozen) and any("conv1a" in name for name in frozen)
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in trained for name, p in net.named_parameters() if name in frozen)
    # fewer FLOPs than the same networks trained whole (no weight gradients for the frozen layers)
    flops = l2g_update_flops(args)
    assert 0.6 * 3 * training_flops("l2g") < flops < 3 * training_flops("l2g")
