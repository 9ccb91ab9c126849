"""Real Snakemake runs of the workflow on a tiny synthetic dataset."""

import json
import re

import pytest
import torch
import yaml

from conftest import FINAL_TARGETS, run_snakemake, tiny_config


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
    config = tiny_config()
    config["datasets"]["demo"]["synthetic"]["seed"] = 1
    dry = run_snakemake(tmp_path, "-n", "--cores", "2", "results/demo/data/manifest.json", config=config)
    assert "make_synthetic" in dry.stdout and "prepare" in dry.stdout


FINAL = FINAL_TARGETS


def planned_jobs(result):
    """{rule: count} from the "Job stats" table of a Snakemake (dry) run."""
    text = result.stdout + result.stderr
    table = text[text.index("Job stats:"):].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


@pytest.fixture
def finished(finished_demo):
    return finished_demo


def test_the_whole_chain_runs_through_snakemake_in_shards(finished):
    results = finished / "results/demo"
    train_ids = (results / "data/train.txt").read_text().split()
    for kind in ("cls_cams", "control_cams", "cams", "no_saliency_cams"):
        metrics = json.loads((results / kind / "miou.json").read_text())
        assert metrics["kind"] == "cam" and metrics["split"] == "train" and 0 <= metrics["miou"] <= 1
        export = json.loads((results / kind / "manifest.json").read_text())
        assert export["shards"] == 2 and export["ids"] == train_ids
        assert export["num_images"] == metrics["num_images"] == len(list((results / kind).glob("*.npz")))
    pseudo = json.loads((results / "pseudo_labels/miou.json").read_text())
    assert set(pseudo) >= {"miou", "miou_no_crf", "saliency_baseline", "ignore_band", "per_class_iou"}
    # the generator's saliency maps, scored as the saliency field scores them, beside the labels
    assert pseudo["saliency_maps"] == {key: json.loads((results / "saliency/score.json").read_text())[key]
                                       for key in ("mae", "f_adaptive", "f_max", "maps")}
    assert pseudo["saliency_maps"]["maps"]["source"] == "folder"
    refine = tiny_config()["datasets"]["demo"]["refine"]
    assert pseudo["background"] == refine["background"] == "cam" and pseudo["ignore_band"] is None
    # the CAMs of every classifier beside the labels and the saliency baseline
    assert set(pseudo["cam_scores"]) == {"cls_cams", "control_cams", "cams", "no_saliency_cams"}
    for kind, summary in pseudo["cam_scores"].items():
        assert summary["miou"] == json.loads((results / kind / "miou.json").read_text())["miou"]
    assert len(list((results / "pseudo_labels").glob("*.png"))) == pseudo["num_images"] == len(train_ids)
    # the control classifier continues stage 1 for as many epochs as L2G trains
    control = torch.load(results / "control/model.pt", weights_only=True)["settings"]
    l2g = torch.load(results / "l2g/model.pt", weights_only=True)["settings"]
    assert control["init_from"] == str((results / "cls/model.pt").resolve())
    assert control["epochs"] == l2g["epochs"] and control["lr"] == l2g["lr"]
    # the second L2G run: train_l2g's settings without saliency
    no_saliency = torch.load(results / "l2g_no_saliency/model.pt", weights_only=True)["settings"]
    assert l2g["use_saliency"] and not no_saliency["use_saliency"] and l2g["crop_layout"] == "corners"
    assert no_saliency == {**l2g, "use_saliency": False, "saliency_maps": None}
    # the maps L2G read: the generator's (saliency source folder)
    assert l2g["saliency_maps"] == {"dir": str((results / "data/synthetic/Sal").resolve()), "source": "folder"}
    # DeepLab on the pseudo labels and on the ground truth, with the same budget and start (init: l2g)
    seg = torch.load(results / "seg/model.pt", weights_only=True)
    supervised = torch.load(results / "supervised/model.pt", weights_only=True)
    assert seg["settings"]["init"] == supervised["settings"]["init"] == "results/demo/l2g/model.pt"
    assert seg["trained_on"]["labels"] == str((results / "pseudo_labels").resolve())
    assert supervised["trained_on"]["labels"] == "ground truth"
    assert seg["settings"]["iterations"] == supervised["settings"]["iterations"] == 2
    final = json.loads((results / "miou.json").read_text())
    assert final["split"] == "val" and final["num_images"] == 4 and final["crf"] is True
    assert set(final["stages"]) == {"cls_cams", "control_cams", "cams", "no_saliency_cams", "pseudo_labels"}
    assert final["stages"]["cams"]["miou"] == json.loads((results / "cams/miou.json").read_text())["miou"]
    assert json.loads((results / "supervised/miou.json").read_text())["stages"] == {}
    assert (results / "miou.csv").read_text().startswith("class,iou,iou_no_crf")
    for log in ("train_seg", "train_supervised", "score_seg", "predict_seg-1-of-2", "label_seg-2-of-2",
                "refine-2-of-2"):
        assert (results / "logs" / f"{log}.log").is_file()
    assert "runs on the CPU" in (results / "logs/train_seg.log").read_text()
    # what each output was made with, and the software versions, beside the results
    record = yaml.safe_load((results / "config.yaml").read_text())
    demo = tiny_config()["datasets"]["demo"]
    assert record["outputs"]["cls"]["settings"] == demo["train_cls"]
    assert record["outputs"]["pseudo_labels"]["settings"] == demo["refine"]
    assert record["outputs"]["seg/logits"]["settings"] == {k: demo["predict_seg"][k] for k in ("scales", "flip",
                                                                                              "batch_size")}
    assert record["outputs"]["l2g"]["inputs"] == {"data": "results/demo", "cls": "results/demo"}
    assert record["versions"]["torch"].startswith("2.13") and "snakemake" in record["versions"]


def test_forcing_one_stage_reruns_it_and_everything_after_it_only(finished):
    jobs = planned_jobs(run_snakemake(finished, "-n", "--cores", "2", "--forcerun", "export_cams", "--", *FINAL))
    assert jobs["export_cams"] == 8 and jobs["evaluate_cams"] == 4 and jobs["refine"] == 2
    assert jobs["train_seg"] == 1 and jobs["score_seg"] == 1  # the supervised model needs no CAMs
    assert not {"make_synthetic", "prepare", "train_cls", "train_l2g", "train_control", "score_supervised"} & set(jobs)


def test_a_changed_setting_reruns_that_stage_and_its_descendants_only(finished):
    config = tiny_config()
    config["datasets"]["demo"]["refine"]["threshold"] = 0.3
    jobs = planned_jobs(run_snakemake(finished, "-n", "--cores", "2", *FINAL, config=config))
    assert jobs == {"refine": 2, "gather": 2, "score_pseudo_labels": 1, "train_seg": 1, "predict_seg": 2,
                    "label_seg": 2, "score_seg": 1}
    nothing = run_snakemake(finished, "-n", "--cores", "2", *FINAL)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


def test_until_stops_after_the_named_stage(tmp_path):
    jobs = planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "2", "--until", "train_l2g", "--", *FINAL))
    assert jobs == {"make_synthetic": 1, "prepare": 1, "train_cls": 1, "train_l2g": 2}  # with and without saliency


def test_lint_is_clean(tmp_path):
    result = run_snakemake(tmp_path, "--lint")
    assert "Lints for" not in result.stdout + result.stderr, result.stdout


def voc_sized(tmp_path):
    """A config whose voc root is a VOC-sized folder of split lists, with its init files in place."""
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "Sal"):  # what `snakemake -n` checks (l2g_core/preflight.py)
        (root / folder).mkdir(parents=True, exist_ok=True)
    lists = root / "ImageSets/Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train_aug.txt").write_text("".join(f"2007_{i:06d}\n" for i in range(10582)))
    (lists / "train.txt").write_text("".join(f"2007_{i:06d}\n" for i in range(1464)))
    (lists / "val.txt").write_text("".join(f"2008_{i:06d}\n" for i in range(1449)))
    config = tiny_config()
    config["datasets"]["voc"]["root"] = str(root)
    for init in ("train_cls", "train_seg"):  # a dry run reads only the first bytes: a small torch file
        path = tmp_path / config["datasets"]["voc"][init]["init"]
        path.parent.mkdir(exist_ok=True)
        torch.save({}, path)
    return config


def test_a_voc_sized_dataset_plans_per_stage_jobs_not_per_image_jobs(tmp_path):
    """...and the prediction's GPU jobs end with the network: the CRF runs in CPU jobs after them."""
    result = run_snakemake(tmp_path, "-n", "--cores", "8", "--resources", "gpu=2", "--", "results/voc/miou.json",
                           config=voc_sized(tmp_path))
    jobs, plan = planned_jobs(result), result.stdout
    assert jobs["export_cams"] == 3 * 4 and jobs["refine"] == 4 and jobs["predict_seg"] == jobs["label_seg"] == 4
    assert jobs["train_l2g"] == 1  # train_l2g_no_saliency: null, no second L2G run
    assert sum(jobs.values()) < 50  # not one per image (11,000)
    held = {re.search(r"^rule (\w+):", block, re.M).group(1): re.search(r"gpu=(\d+)", block).group(1)
            for block in plan.split("\n\n") if re.search(r"^rule (predict|label)_seg:", block, re.M)}
    assert held == {"predict_seg": "1", "label_seg": "0"}
    # each job gets its part of the predict_seg section: the network's options, the CRF's
    network = next(line for line in plan.splitlines() if "l2g predict-seg" in line).split()
    labelling = next(line for line in plan.splitlines() if "l2g label-seg" in line).split()
    assert "--scales" in network and "--no-flip" in network and "--batch-size" in network and "--crf" not in network
    assert "--crf-image" in labelling and "deeplab_pytorch" in labelling and "--bi-rgb-std" in labelling
    assert "--scales" not in labelling


def test_voc_l2g_and_control_start_from_the_imagenet_weights_not_stage_1(tmp_path):
    """Official L2G has no stage 1: both networks start from the ImageNet ResNet-38 (fc8, PCM
    fresh). The control starts there too; stage 1 still runs, for the plain-CAM baseline."""
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "8", "--", "results/voc/cams/miou.json",
                           "results/voc/control_cams/miou.json", config=voc_sized(tmp_path))
    commands = [line for line in result.stdout.splitlines() if " l2g train-" in line]
    for stage in ("train-l2g", "train-cls --manifest results/voc/data/manifest.json  --out results/voc/control"):
        line = next(c for c in commands if f"l2g {stage}" in c)
        assert "--init-from" not in line
        assert "--backbone resnet38" in line and "--init weights/resnet38_imagenet.pt" in line and "--pcm" in line
    l2g = next(c for c in commands if "l2g train-l2g" in c)
    assert "--bg-thr 0.001" in l2g and "--roi-align legacy" in l2g and "--precision fp32" in l2g
    stage1 = planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "8", "--", "results/voc/l2g/model.pt",
                                        config=voc_sized(tmp_path)))
    assert "train_cls" not in stage1 and stage1["train_l2g"] == 1


def test_a_null_init_on_voc_is_one_config_error_line(tmp_path):
    config = voc_sized(tmp_path)
    config["datasets"]["voc"]["train_cls"]["init"] = None
    result = run_snakemake(tmp_path, "-n", "--cores", "2", "--", "results/voc/miou.json", config=config, check=False)
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert result.returncode == 1 and lines == [
        "l2g-pipeline: config error: datasets.voc.train_cls.init: null would train resnet38 from random weights; "
        "set the pretrained weights file (README, PASCAL VOC) or scratch"]
    config["datasets"]["voc"]["train_cls"]["init"] = "scratch"  # asked for explicitly: accepted
    assert run_snakemake(tmp_path, "-n", "--cores", "2", "--", "results/voc/miou.json", config=config).returncode == 0



@pytest.mark.parametrize("init, folder", [("stage1", "cls"), ("l2g", "l2g")])
def test_both_deeplabs_start_from_the_run_classifier_that_init_names(tmp_path, init, folder):
    config = tiny_config()
    config["datasets"]["demo"]["train_seg"]["init"] = init
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "2", "--", "results/demo/miou.json",
                           "results/demo/supervised/miou.json", config=config)
    commands = [line for line in result.stdout.splitlines() if " l2g train-seg " in line]
    assert len(commands) == 2  # the pseudo-label DeepLab and the supervised reference
    for line in commands:
        assert f" --init results/demo/{folder}/model.pt " in line and f"--init {init}" not in line


def test_stage_1_cannot_start_from_a_classifier_it_precedes(tmp_path):
    config = tiny_config()
    config["datasets"]["demo"]["train_cls"]["init"] = "l2g"
    result = run_snakemake(tmp_path, "-n", "--cores", "2", config=config, check=False)
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert result.returncode == 1 and lines == [
        "l2g-pipeline: config error: datasets.demo.train_cls.init: l2g names a classifier this run trains "
        "after stage 1; it is a train_seg init (stage 2 starts from stage 1 with train_l2g.start)"]

def test_gpu_jobs_claim_distinct_devices_and_a_2_gpu_training_runs_ddp(tmp_path):
    """With two (pretended) GPUs and --resources gpu=2: the 2-GPU training job gets both and runs
    under torchrun; the two export shards of 1 GPU each, running at once, get one device each."""
    config = tiny_config()
    config["datasets"]["demo"]["jobs"]["gpu"] = {"default": 0, "train_cls": 2, "export_cams": 1}
    env = {"L2G_FAKE_GPUS": "2", "L2G_GPU_LOCK_DIR": str(tmp_path / "locks")}
    run_snakemake(tmp_path / "run", "--cores", "2", "--resources", "gpu=2", "--", "results/demo/cls_cams/manifest.json",
                  config=config, env=env)
    logs = tmp_path / "run/results/demo/logs"
    train = (logs / "train_cls.log").read_text()
    assert "claimed GPU(s) 0,1 of 0,1" in train and "DDP rank 0 of 2" in train
    claims = [re.search(r"claimed GPU\(s\) (\d) of 0,1", (logs / f"export_cls_cams-{i}-of-2.log").read_text())
              for i in (1, 2)]
    assert all(claims) and {m.group(1) for m in claims} == {"0", "1"}  # started together: one each


# --- expected numbers (config expect:, l2g_core.expectations) -----------------------------------


def test_every_score_carries_its_verdicts_and_the_run_ends_with_their_table(finished):
    """The tiny demo ran with strict_expectations and conftest.TINY_EXPECT: a range on cams judged
    by its scorer, a ratio seg / supervised judged by the final score, which read supervised for it."""
    results = finished / "results/demo"
    cams = json.loads((results / "cams/miou.json").read_text())["expectations"]
    assert [(v["stage"], v["expectation"], v["holds"]) for v in cams] == [("cams", "0 <= cams <= 1", True)]
    assert json.loads((results / "control_cams/miou.json").read_text())["expectations"] == []
    final = json.loads((results / "miou.json").read_text())["expectations"]
    supervised = json.loads((results / "supervised/miou.json").read_text())["miou"]
    assert [(v["expectation"], v["values"]) for v in final] == [
        ("seg / supervised >= 0", {"seg": json.loads((results / "miou.json").read_text())["miou"],
                                   "supervised": supervised})]
    table = json.loads((results / "expectations.json").read_text())
    assert [v["expectation"] for v in table["verdicts"]] == ["0 <= cams <= 1", "seg / supervised >= 0"]
    assert table["fails"] == 0
    markdown = (results / "expectations.md").read_text()
    assert markdown.startswith("# Expectations of demo") and "| cams | `0 <= cams <= 1` |" in markdown
    assert markdown in (results / "logs/score_seg.log").read_text()
    assert "expectation holds: cams: 0 <= cams <= 1" in (results / "logs/evaluate_cams.log").read_text()


@pytest.mark.parametrize("strict", [False, True])
def test_a_failed_expectation_warns_and_fails_the_run_only_under_strict(finished, tmp_path, strict):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(finished, workdir, symlinks=True)
    config = tiny_config()
    config["datasets"]["demo"]["expect"] = {
        "cams": [{"min": 0.99, "hint": "CHECK THE CAMS"}],
        "seg": [{"minus": "pseudo_labels", "min": 0.9, "hint": "CHECK THE LABELS"}]}
    config["strict_expectations"] = strict
    result = run_snakemake(workdir, "--cores", "2", *FINAL, config=config, check=False)
    results = workdir / "results/demo"
    log = (results / "logs/evaluate_cams.log").read_text().splitlines()
    measured = json.loads((results / "cams/miou.json").read_text())["miou"] if not strict else None
    if not strict:
        assert result.returncode == 0
        assert f"WARN expectation fails: cams: cams >= 0.99: measured {measured:.4f}; check: CHECK THE CAMS" in log
        table = json.loads((results / "expectations.json").read_text())
        assert [(v["stage"], v["holds"]) for v in table["verdicts"]] == [("cams", False), ("seg", False)]
        assert "| seg | `seg - pseudo_labels >= 0.9` |" in (results / "expectations.md").read_text()
    else:
        assert result.returncode != 0
        errors = [line for line in log if "error" in line]
        assert len(errors) == 1 and re.fullmatch(
            r"l2g evaluate: error: expectation failed: cams: cams >= 0\.99: measured 0\.\d{4}; "
            r"check: CHECK THE CAMS \(strict_expectations\)", errors[0])
        assert errors[0] in result.stdout + result.stderr  # Snakemake shows the failed job's log
        assert not (results / "cams/miou.json").exists()  # the failed job's output is removed
