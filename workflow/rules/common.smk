# Config validation, wildcard constraints, input functions and job settings shared by every rule.
import copy
import json
import os
import re
import shlex
import sys
from pathlib import Path

from l2g_core.config import require_root, validate_config
from l2g_core.errors import L2GError
from l2g_core.expectations import NO_CRF, STRICT_ENV, entries, margins, ranges
from l2g_core.experiments import MARK, all_runs, run_settings, split_run
from l2g_core.preflight import check_data, check_detector, check_init
from l2g_core.pipeline import (CAM_MODELS, L2G_RUNS, SALIENCY, SEG_MODELS, SHARDED, SUBSET, TRAINED_MODELS,
                               cam_folders, control_options, expectation_inputs, from_stage1, l2g_options,
                               made_with, makes_saliency, metrics_path, prediction_options, product_of,
                               saliency_options, saliency_source, saliency_users, scored_stages, seg_init_model,
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
# strict_expectations reaches the scoring jobs through their environment, not as a parameter: it
# changes no output, so switching it reruns nothing (l2g_core.expectations).
os.environ[STRICT_ENV] = "1" if config.get("strict_expectations") else "0"
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


_preflighted = set()


def preflight(dataset):
    """The checks of a real dataset's folder that need no job (l2g_core.preflight: layout, split
    lists, saliency maps where the run reads them), for `dataset`'s run: input functions call this,
    so `snakemake -n` refuses a run that would stop hours in, and only for the datasets a target
    reaches (a dataset without a root is no error until it is targeted). Once per dataset or run."""
    base = split_run(dataset)[0]
    if dataset in _preflighted or base in SYNTHETIC:
        return
    try:
        check_data(dataset, settings(dataset), require_root(config, base))
    except L2GError as error:
        fail(error)
    _preflighted.add(dataset)


def dataset_input(wildcards):
    """prepare's input: the generated folder for a synthetic dataset; a real dataset's folder is
    checked here (it has no rule-made input)."""
    if wildcards.dataset in SYNTHETIC:
        return [dataset_root(wildcards)]
    preflight(wildcards.dataset)
    return []


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


SLURM = {key: value for key, value in (config.get("slurm") or {}).items() if value}  # profiles/slurm's config:


def job_resources(rule, gpu=None):
    """A rule's resources: gpu, mem_mb and runtime from the dataset's `jobs`, and where SLURM runs
    the job (the config's `slurm` section, set by profiles/slurm): a job with GPUs in gpu_partition
    and gpu_account, any other in partition and account. With `gres`, the GPUs are asked for as
    --gres=GRES:N (the executor plugin's `gres`) and the `gpu` resource is 0, since the plugin
    would send --gpus=N beside it, which SLURM rejects; the count then travels as `l2g_gpus`.
    `gpu` (a wildcards function) replaces jobs.gpu.RULE where a rule needs a GPU only sometimes."""
    resources = {kind: job_setting(kind, rule) for kind in ("mem_mb", "runtime")}
    gpus = gpu or job_setting("gpu", rule)
    if "gres" in SLURM:
        resources["gpu"] = 0
        resources["l2g_gpus"] = gpus
        resources["gres"] = lambda wc: f"{SLURM['gres']}:{gpus(wc)}" if gpus(wc) else ""
    else:
        resources["gpu"] = gpus
    for setting, resource in (("partition", "slurm_partition"), ("account", "slurm_account")):
        if setting in SLURM or f"gpu_{setting}" in SLURM:
            cpu = SLURM.get(setting, "")
            gpu = SLURM.get(f"gpu_{setting}", cpu)
            resources[resource] = lambda wc, cpu=cpu, gpu=gpu: gpu if gpus(wc) else cpu
    return resources


def loader_workers(wildcards, threads, resources):
    """--workers of a training job, per DDP process (its section's `workers`, placed after, wins):
    on GPUs, the job's threads are split over its processes, one per GPU (l2g with-gpus gives each
    OMP_NUM_THREADS = threads / GPUs), and all but one of a process's share decode images while its
    main thread feeds its device; on the CPU none, since the job's threads are the computation."""
    gpus = job_gpus(resources)
    return f"--workers {max(threads // gpus - 1, 0)}" if gpus else "--workers 0"


def export_workers(wildcards, threads, resources):
    """--workers of a CAM export job: one process, whatever its GPU count, so all but one of the
    job's threads decode images (its section's `workers`, placed after, wins); on the CPU none."""
    return f"--workers {max(threads - 1, 0) if job_gpus(resources) else 0}"


def job_gpus(resources):
    """The GPU count of a job (in the gres form, `gpu` is 0 and the count is l2g_gpus)."""
    return resources.l2g_gpus if "gres" in SLURM else resources.gpu


def launch(ddp=False):
    """The start of a job's shell line: torch threads as the job's threads, and `l2g with-gpus`,
    which claims the job's GPUs (none: CPU, said in the log) and hides every other device. Under
    DDP, with-gpus shares the threads out over the processes (one per GPU)."""
    ddp_flag = " --ddp" if ddp else ""
    count = "{resources.l2g_gpus}" if "gres" in SLURM else "{resources.gpu}"  # see job_resources
    return f"OMP_NUM_THREADS={{threads}} l2g with-gpus --count {count}{ddp_flag} -- "


def shard_manifests(wildcards):
    """The shard manifests of the per-image folder `wildcards.folder` of the job's dataset."""
    count = settings(wildcards.dataset)["jobs"]["shards"]
    return [f"results/{wildcards.dataset}/{wildcards.folder}/manifest-shard-{i}-of-{count}.json"
            for i in range(1, count + 1)]


# --- stage-specific input functions --------------------------------------------------------------

def MANIFEST(wildcards):
    """Input function of every stage after prepare: the dataset's manifest, once the run's own
    settings passed the preflight (an experiment's variant may read saliency that its base does not)."""
    preflight(wildcards.dataset)
    return at(wildcards.dataset, "data/manifest.json")


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


def init_file(dataset, section):
    """The weights file `section.init` of `dataset` names (an input of its job), or None for a
    torchvision weights name, scratch, stage1 or null. A missing or empty file, or one that is no
    torch file by its first bytes, is a one-line config error (l2g_core.preflight.check_init)."""
    try:
        return check_init(dataset, section, settings(dataset)[section].get("init"))
    except L2GError as error:
        fail(error)


def stage2_inputs(wildcards):
    """What a stage-2 job (L2G, control) starts from: the stage-1 classifier, or stage 1's init file."""
    dataset = settings(wildcards.dataset)
    inputs = {"manifest": MANIFEST(wildcards)}
    if from_stage1(dataset):
        inputs["init"] = at(wildcards.dataset, "cls/model.pt")
    elif weights := init_file(wildcards.dataset, "train_cls"):
        inputs["weights"] = weights
    return inputs


def l2g_inputs(wildcards):
    """What an L2G run starts from (stage2_inputs), and the saliency maps where the run makes them
    and this L2G run reads them."""
    options = l2g_options(settings(wildcards.dataset), wildcards.l2g) or {}
    return {**stage2_inputs(wildcards), **made_maps(wildcards.dataset, options.get("use_saliency", True))}


def init_from(wildcards, input):
    return f"--init-from {input.init}" if "init" in input.keys() else ""


def weights_input(stage):
    """Input function: the init weights file of `stage`'s section, if it names one."""
    return lambda wc: [path] if (path := init_file(wc.dataset, stage)) else []


def refine_inputs(wildcards):
    """The L2G CAMs, where refine takes its threshold from them their scores, and the saliency maps
    where the run makes them and refine reads them."""
    dataset = settings(wildcards.dataset)
    inputs = {"manifest": MANIFEST(wildcards), "cams": at(wildcards.dataset, "cams/manifest.json")}
    if threshold_from_cams(dataset):
        inputs["metrics"] = at(wildcards.dataset, "cams/miou.json")
    return {**inputs, **made_maps(wildcards.dataset, dataset["refine"].get("background") == "saliency")}


def refine_background(wildcards, input):
    """--threshold-from the CAM scores, unless the config sets a threshold or an ignore band."""
    return f"--threshold-from {input.metrics}" if "metrics" in input.keys() else ""


def seg_inputs(wildcards):
    """The pseudo labels (seg only), the run's classifier that init names (stage1, l2g), the init file."""
    inputs = {"manifest": MANIFEST(wildcards)}
    if wildcards.model == "seg":
        inputs["labels"] = at(wildcards.dataset, "pseudo_labels/manifest.json")
    if folder := seg_init_model(settings(wildcards.dataset)):
        inputs["init"] = at(wildcards.dataset, f"{folder}/model.pt")
    elif weights := init_file(wildcards.dataset, "train_seg"):
        inputs["weights"] = weights
    return inputs


def seg_source(wildcards, input):
    source = f"--labels {Path(input.labels).parent}" if wildcards.model == "seg" else "--ground-truth"
    return source + (f" --init {input.init}" if "init" in input.keys() else "")


def seg_flags(wildcards):
    return cli_flags(seg_options(settings(wildcards.dataset)))


# --- saliency maps (a dataset's saliency: {source}, l2g_core.saliency) ----------------------------


def made_maps(dataset, reads=True):
    """{"saliency": the manifest of the maps the run makes}, for a job that `reads` them; {} where
    the run reads ROOT/Sal (source folder) or no maps."""
    return {"saliency": at(dataset, f"{SALIENCY}/manifest.json")} if reads and makes_saliency(settings(dataset)) \
        else {}


def saliency_dir(wildcards, input):
    """Params function: --saliency-dir of the maps the job reads, where the run makes them (else
    the command's default, the dataset's ROOT/Sal)."""
    return f"--saliency-dir {shlex.quote(str(Path(input.saliency).parent))}" if "saliency" in input.keys() else ""


_detectors = {}


def saliency_inputs(wildcards):
    """What the saliency job reads: the stage-1 CAMs (source cams) or the detector's weights file,
    checked once per run before any job (l2g_core.preflight.check_detector)."""
    name, dataset = wildcards.dataset, settings(wildcards.dataset)
    if not makes_saliency(dataset):
        fail(f"datasets.{name}.saliency: this run makes no saliency maps (source {saliency_source(dataset)}, "
             f"read by {', '.join(saliency_users(dataset)) or 'no stage'})")
    inputs = {"manifest": MANIFEST(wildcards)}
    if saliency_source(dataset) == "cams":
        return {**inputs, "cams": at(name, "cls_cams/manifest.json")}
    if name not in _detectors:
        try:
            _detectors[name] = check_detector(name, dataset)
        except L2GError as error:
            fail(error)
    return {**inputs, "weights": dataset["saliency"]["weights"]}


def saliency_source_flags(wildcards, input):
    """--source, its input (--cams or --weights) and its options from the dataset's saliency section."""
    options = saliency_options(settings(wildcards.dataset))
    source = options.pop("source")
    options.pop("weights", None)  # an input of the job
    read = f"--cams {shlex.quote(str(Path(input.cams).parent))}" if source == "cams" else \
        f"--weights {shlex.quote(str(input.weights))}"
    return f"--source {source} {read} {cli_flags(options)}"


def saliency_gpus(wildcards):
    """jobs.gpu.saliency for the detector (a network); none for the cams source (CPU CRFs)."""
    return job_setting("gpu", "saliency")(wildcards) if saliency_source(settings(wildcards.dataset)) == "detector" \
        else 0


def saliency_score_inputs(wildcards):
    """The maps score_saliency scores: the run's own where it makes them, else the dataset's ROOT/Sal."""
    return {"manifest": MANIFEST(wildcards), **made_maps(wildcards.dataset)}


def pseudo_label_maps(wildcards):
    """The saliency maps score_pseudo_labels reads for its baseline, and their score, where the run
    reads maps."""
    if not saliency_users(settings(wildcards.dataset)):
        return {}
    return {**made_maps(wildcards.dataset), "saliency_score": at(wildcards.dataset, f"{SALIENCY}/score.json")}


def saliency_score_flag(wildcards, input):
    return f"--saliency-score {input.saliency_score}" if "saliency_score" in input.keys() else ""


# --- expectations (config expect:, l2g_core.expectations) ----------------------------------------


def expect_flags(name, final=False):
    """Params function: --name and --expect of a scoring job whose score is `name(wildcards)`: the
    ranges on that score (and on NAME_no_crf); the final score also gets every margin, and writes
    the run's verdict table."""
    def flags(wildcards):
        stage = name(wildcards)
        expect = settings(wildcards.dataset).get("expect") or {}
        entries = ranges(expect, [stage, f"{stage}{NO_CRF}"]) + (margins(expect) if final else [])
        return f"--name {stage}" + (f" --expect {shlex.quote(json.dumps(entries))}" if entries else "")
    return flags


def reference_metrics(wildcards):
    """{reference_NAME: miou.json} of the scores the final score reads for the expectations only."""
    dataset = settings(wildcards.dataset)
    names = {product: name for name, product in reversed(scored_stages(dataset).items())}
    return {f"reference_{names[product]}": at(wildcards.dataset, metrics_path(product))
            for product in expectation_inputs(dataset)}


def final_expect_options(wildcards, input, output):
    """Params function of score_seg: its --expect (ranges on seg and every margin), the earlier
    scores read for them (--reference) and the run's verdict table (--verdicts)."""
    references = [f"--reference {key[len('reference_'):]}={input[key]}" for key in input.keys()
                  if key.startswith("reference_")]
    return " ".join([expect_flags(lambda wc: "seg", final=True)(wildcards), *references,
                     f"--verdicts {output.verdicts}"])


SCORE_SEG_COMMAND = ("l2g score-seg --manifest {input.manifest} --split val --pred {params.pred}"
                     " {params.stages} {params.expect} --out {output.metrics} --workers {threads} > {log} 2>&1")


# --- experiments ---------------------------------------------------------------------------------


def experiment_metrics(wildcards):
    """{run: {kind: metrics file}} of the experiment's runs, each where it is made."""
    experiment = config["experiments"][wildcards.experiment]
    metrics = {}
    for run in EXPERIMENTS[wildcards.experiment]:
        name = f"{wildcards.dataset}{MARK}{wildcards.experiment}/{run}"
        score = experiment.get("score", "final")
        if score == "final":
            metrics[run] = {"final": at(name, "miou.json"), "supervised": at(name, "supervised/miou.json")}
        else:
            metrics[run] = {folder: at(name, f"{folder}/miou.json") for folder in cam_folders(settings(name))}
        if score == "pseudo_labels":
            metrics[run]["pseudo_labels"] = at(name, "pseudo_labels/miou.json")
    return metrics


def experiment_runs(wildcards):
    """--runs of summarize-experiment: each run's variant, seed and metrics files, as JSON."""
    runs = EXPERIMENTS[wildcards.experiment]
    return json.dumps({run: {"variant": runs[run][0], "seed": runs[run][1], "metrics": metrics}
                       for run, metrics in experiment_metrics(wildcards).items()})
