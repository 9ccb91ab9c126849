# Config validation, wildcard constraints, input functions and job settings shared by every rule.
import copy
import json
import re
import shlex
import sys
from pathlib import Path

from l2g_core.config import require_root, validate_config
from l2g_core.errors import L2GError
from l2g_core.experiments import MARK, all_runs, run_settings, split_run
from l2g_core.pipeline import (CAM_MODELS, L2G_RUNS, SEG_MODELS, SHARDED, SUBSET, TRAINED_MODELS, cam_folders,
                               control_options, from_stage1, l2g_options, made_with, prediction_options, product_of,
                               seg_options, summary_stages, threshold_from_cams)
from l2g_core.workflow_support import cli_flags, current_outputs, job_environment, record_outputs

job_environment(workflow.basedir)
CONDA_ENV = "../../envs/l2g.yaml"  # for rules in workflow/rules/


def fail(message):
    """A user mistake in the config: one line, non-zero exit, no traceback."""
    sys.stderr.write(f"l2g-pipeline: config error: {message}\n")
    sys.exit(1)


WRITTEN_CONFIG = copy.deepcopy(config)  # as the user wrote it: mistakes in a run are named there
try:
    # every dataset's settings with its recipe resolved (experiment runs build on these)
    config["datasets"] = validate_config(config)
except L2GError as error:
    fail(error)

DATASETS = config["datasets"]
SYNTHETIC = [name for name, ds in DATASETS.items() if ds["kind"] == "synthetic"]
EXPERIMENTS = all_runs(config)
# Every experiment's runs of every dataset: datasets of their own, results/{dataset}/experiments/NAME/RUN.
RUNS = [f"{dataset}{MARK}{name}/{run}" for dataset in DATASETS for name, runs in EXPERIMENTS.items() for run in runs]
_run_settings = {}


def settings(name):
    """A dataset's settings, or an experiment run's (checked when first asked for)."""
    if name in DATASETS:
        return DATASETS[name]
    if name not in _run_settings:
        try:
            _run_settings[name] = run_settings(WRITTEN_CONFIG, DATASETS, name)
        except L2GError as error:
            fail(error)
    return _run_settings[name]


def one_of(names):
    """A wildcard pattern matching exactly these names (or nothing when there are none)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


wildcard_constraints:
    dataset=one_of([*DATASETS, *RUNS]),
    shard=r"\d+",
    shards=r"\d+",


_made = {}
_owners = {}


def made(dataset, product):
    """made_with of `product` in `dataset`'s run (None where the run has no such output), cached."""
    if (dataset, product) not in _made:
        try:
            _made[dataset, product] = made_with(settings(dataset), product)
        except KeyError:  # e.g. a base dataset without the second L2G run a variant adds
            _made[dataset, product] = None
    return _made[dataset, product]


def owner(dataset, product):
    """The dataset whose folder holds `product` for `dataset`'s run: for an experiment run, the
    base dataset or else the experiment's first run that makes it the same way
    (l2g_core.pipeline.made_with); otherwise the run itself."""
    base, experiment, _ = split_run(dataset)
    if experiment is None:
        return dataset
    if (dataset, product) not in _owners:
        earlier = [base, *(f"{base}{MARK}{experiment}/{run}" for run in EXPERIMENTS[experiment])]
        earlier = earlier[:earlier.index(dataset)]
        _owners[dataset, product] = next((name for name in earlier if made(name, product) == made(dataset, product)),
                                         dataset)
    return _owners[dataset, product]


def at(dataset, path):
    """results/{owner}/{path}: where `path` (under a dataset's results folder) is for `dataset`."""
    return f"results/{owner(dataset, product_of(path))}/{path}"


def result(path):
    """Input function: `path` (with the job's wildcards filled in) where it is for the job's dataset."""
    return lambda wc: at(wc.dataset, path.format(**dict(wc.items())))


def folder_of(name):
    """Params function: the folder of input `name` (a stage's manifest.json), as an option value."""
    return lambda wc, input: shlex.quote(str(Path(input[name]).parent))


def dataset_root(wildcards):
    if wildcards.dataset in SYNTHETIC:
        return f"results/{wildcards.dataset}/data/synthetic"
    try:
        return require_root(config, wildcards.dataset)
    except L2GError as error:
        fail(error)


def synthetic_input(wildcards):
    """The generated folder for a synthetic dataset; real datasets have no rule-made input."""
    return [dataset_root(wildcards)] if wildcards.dataset in SYNTHETIC else []


def stage_flags(stage):
    """Input function: the options of `stage` for the dataset of the job."""
    return lambda wc: cli_flags(settings(wc.dataset)[stage])


def prediction_flags(network):
    """Input function: the predict_seg options of the network job, or of the labelling job."""
    return lambda wc: cli_flags(prediction_options(settings(wc.dataset), network))


# --- jobs: threads, GPUs, memory, run time (config datasets.NAME.jobs) -------------------------


def job_setting(kind, rule):
    """A callable giving the `kind` setting (threads, gpu, mem_mb, runtime) of `rule`'s jobs."""
    def setting(wildcards):
        values = settings(wildcards.dataset)["jobs"][kind]
        return values.get(rule, values["default"])
    return setting


def job_resources(rule):
    return {kind: job_setting(kind, rule) for kind in ("gpu", "mem_mb", "runtime")}


def loader_workers(wildcards, threads, resources):
    """--workers of a training or CAM export job (its section's `workers`, placed after, wins): on
    GPUs, all but one of the job's threads decode images while the main thread feeds the devices;
    on the CPU none, since the job's threads are the computation."""
    return f"--workers {max(threads - 1, 0) if resources.gpu else 0}"


def launch(ddp=False):
    """The start of a job's shell line: torch threads as the job's threads, and `l2g with-gpus`,
    which claims the job's GPUs (none: CPU, said in the log) and hides every other device."""
    ddp_flag = " --ddp" if ddp else ""
    return f"OMP_NUM_THREADS={{threads}} l2g with-gpus --count {{resources.gpu}}{ddp_flag} -- "


def shard_manifests(wildcards):
    """The shard manifests of the per-image folder `wildcards.folder` of the job's dataset."""
    count = settings(wildcards.dataset)["jobs"]["shards"]
    return [f"results/{wildcards.dataset}/{wildcards.folder}/manifest-shard-{i}-of-{count}.json"
            for i in range(1, count + 1)]


# --- stage-specific input functions --------------------------------------------------------------

MANIFEST = result("data/manifest.json")
# The scored part of the training split: "" (all of it, miou.json) or _train_subset.
PARTS = f"|_{SUBSET}"


def scored_split(wildcards):
    return "train" if not wildcards.part else SUBSET


def summary_metrics(dataset, part=""):
    """{name: miou.json} of the earlier stages whose numbers the final miou.json carries."""
    return {name: at(dataset, f"{product}.json") for name, product in summary_stages(settings(dataset)).items()}


def cam_metrics(dataset, part=""):
    """{name: miou.json} of every CAM folder of the dataset (on the scored part of the split)."""
    return {folder: at(dataset, f"{folder}/miou{part}.json") for folder in cam_folders(settings(dataset))}


def stage_metrics(metrics):
    """Input function: {score_NAME: miou.json} of the job's dataset (and scored part)."""
    return lambda wc: {f"score_{name}": path for name, path in metrics(wc.dataset, getattr(wc, "part", "")).items()}


def stage_options(option, metrics):
    """Params function: `--option NAME=miou.json` for each earlier stage of the job's dataset."""
    return lambda wc, input: " ".join(f"--{option} {name}={input[f'score_{name}']}"
                                      for name in metrics(wc.dataset, getattr(wc, "part", "")))


def l2g_flags(wildcards):
    options = l2g_options(settings(wildcards.dataset), wildcards.l2g)
    if options is None:
        fail(f"datasets.{wildcards.dataset}.{L2G_RUNS[wildcards.l2g]} is not set: no L2G run without saliency")
    return cli_flags(options)


def control_flags(wildcards):
    return cli_flags(control_options(settings(wildcards.dataset)))


def init_file(init):
    """The weights file an `init` setting names (an input of its job), or None for a torchvision
    weights name, scratch, stage1 or null. A missing file is a one-line config error."""
    if init is None or init in ("scratch", "stage1") or re.fullmatch(r"[A-Z][A-Z0-9_]*", init):
        return None
    if not Path(init).is_file():
        fail(f"{init}: init weights file not found (README, PASCAL VOC: l2g convert-weights, "
             f"deeplab-pytorch's converted DeepLab weights)")
    return init


def stage2_inputs(wildcards):
    """What a stage-2 job (L2G, control) starts from: the stage-1 classifier, or stage 1's init file."""
    dataset = settings(wildcards.dataset)
    inputs = {"manifest": MANIFEST(wildcards)}
    if from_stage1(dataset):
        inputs["init"] = at(wildcards.dataset, "cls/model.pt")
    elif init_file(dataset["train_cls"].get("init")):
        inputs["weights"] = dataset["train_cls"]["init"]
    return inputs


def init_from(wildcards, input):
    return f"--init-from {input.init}" if "init" in input.keys() else ""


def weights_input(stage):
    """Input function: the init weights file of `stage`'s section, if it names one."""
    return lambda wc: [path] if (path := init_file(settings(wc.dataset)[stage].get("init"))) else []


def refine_inputs(wildcards):
    """The L2G CAMs and, where refine takes its threshold from them, their scores."""
    inputs = {"manifest": MANIFEST(wildcards), "cams": at(wildcards.dataset, "cams/manifest.json")}
    if threshold_from_cams(settings(wildcards.dataset)):
        inputs["metrics"] = at(wildcards.dataset, "cams/miou.json")
    return inputs


def refine_background(wildcards, input):
    """--threshold-from the CAM scores, unless the config sets a threshold or an ignore band."""
    return f"--threshold-from {input.metrics}" if "metrics" in input.keys() else ""


def seg_inputs(wildcards):
    """The pseudo labels (seg only), the stage-1 classifier when init is `stage1`, the init file."""
    inputs = {"manifest": MANIFEST(wildcards)}
    if wildcards.model == "seg":
        inputs["labels"] = at(wildcards.dataset, "pseudo_labels/manifest.json")
    init = settings(wildcards.dataset)["train_seg"].get("init")
    if init == "stage1":
        inputs["init"] = at(wildcards.dataset, "cls/model.pt")
    elif init_file(init):
        inputs["weights"] = init
    return inputs


def seg_source(wildcards, input):
    source = f"--labels {Path(input.labels).parent}" if wildcards.model == "seg" else "--ground-truth"
    return source + (f" --init {input.init}" if "init" in input.keys() else "")


def seg_flags(wildcards):
    return cli_flags(seg_options(settings(wildcards.dataset)))


SCORE_SEG_COMMAND = ("l2g score-seg --manifest {input.manifest} --split val --pred {params.pred}"
                     " {params.stages} --out {output.metrics} --workers {threads} > {log} 2>&1")


# --- experiments ---------------------------------------------------------------------------------


def experiment_metrics(wildcards):
    """{run: {kind: metrics file}} of the experiment's runs, each where it is made."""
    experiment = config["experiments"][wildcards.experiment]
    metrics = {}
    for run in EXPERIMENTS[wildcards.experiment]:
        name = f"{wildcards.dataset}{MARK}{wildcards.experiment}/{run}"
        if experiment.get("score", "final") == "cams":
            metrics[run] = {folder: at(name, f"{folder}/miou.json") for folder in cam_folders(settings(name))}
        else:
            metrics[run] = {"final": at(name, "miou.json"), "supervised": at(name, "supervised/miou.json")}
    return metrics


def experiment_runs(wildcards):
    """--runs of summarize-experiment: each run's variant, seed and metrics files, as JSON."""
    runs = EXPERIMENTS[wildcards.experiment]
    return json.dumps({run: {"variant": runs[run][0], "seed": runs[run][1], "metrics": metrics}
                       for run, metrics in experiment_metrics(wildcards).items()})
