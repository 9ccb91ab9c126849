# Config validation, wildcard constraints, input functions and job settings shared by every rule.
import re
import shlex
import sys
from pathlib import Path

from l2g_core.config import l2g_runs, require_root, validate_config
from l2g_core.errors import L2GError
from l2g_core.workflow_support import cli_flags, job_environment, write_resolved_configs

job_environment(workflow.basedir)
CONDA_ENV = "../../envs/l2g.yaml"  # for rules in workflow/rules/


def fail(message):
    """A user mistake in the config: one line, non-zero exit, no traceback."""
    sys.stderr.write(f"l2g-pipeline: config error: {message}\n")
    sys.exit(1)


try:
    # every dataset's settings with its recipe resolved; results/{dataset}/config.yaml records these
    config["datasets"] = validate_config(config)
except L2GError as error:
    fail(error)

DATASETS = config["datasets"]
SYNTHETIC = [name for name, ds in DATASETS.items() if ds["kind"] == "synthetic"]
# CAMs of the classifiers: stage 1 (plain CAMs), the control (stage 1 trained on as long as L2G
# trains, without the transfer loss), the L2G global network and, where the config asks for one
# (train_l2g_no_saliency), a second L2G network trained without the saliency maps.
CAM_MODELS = {"cls_cams": "cls", "control_cams": "control", "cams": "l2g", "no_saliency_cams": "l2g_no_saliency"}
# The L2G runs: {model folder: config section of its options}.
L2G_RUNS = {"l2g": "train_l2g", "l2g_no_saliency": "train_l2g_no_saliency"}
# The control run trains like stage 2 (same start, budget, batch, schedule, inputs), with no
# transfer loss: an L2G gain over it is not more training.
CONTROL_KEYS = ("input_size", "epochs", "iterations", "batch_size", "lr", "weight_decay", "momentum", "nesterov",
                "schedule", "step_epochs", "gamma", "poly_power", "poly_step", "accumulate", "seed", "workers",
                "amp", "log_every", "resize", "short_side", "crop_axes", "flip", "jitter", "image_stats")
# The model options of stage 1 that an L2G run with start: pretrained (official) builds on.
MODEL_KEYS = ("backbone", "init", "pcm", "output_stride")
# DeepLab on the pseudo labels, and the fully supervised reference on the ground truth.
SEG_MODELS = ("seg", "supervised")
# The part of the training split scored beside it (VOC's 1,464-image train list within train_aug).
SUBSET = "train_subset"
# Per-image output folders made in shards, and the split each covers.
SHARDED = {**dict.fromkeys(CAM_MODELS, "train"), "pseudo_labels": "train", **{f"{m}/pred": "val" for m in SEG_MODELS}}


def one_of(names):
    """A wildcard pattern matching exactly these names (or nothing when there are none)."""
    return "|".join(names) if names else "(?!x)x"


wildcard_constraints:
    dataset=one_of(DATASETS),
    shard=r"\d+",
    shards=r"\d+",


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
    return lambda wc: cli_flags(DATASETS[wc.dataset][stage])


# The keys of the predict_seg section that the network job (predict-seg) takes; the others
# (the CRF's) go to the labelling job (label-seg).
NETWORK_KEYS = ("scales", "flip", "batch_size")


def prediction_flags(network):
    """Input function: the predict_seg options of the network job, or of the labelling job."""
    def flags(wildcards):
        section = DATASETS[wildcards.dataset]["predict_seg"]
        return cli_flags({key: value for key, value in section.items() if (key in NETWORK_KEYS) == network})
    return flags


# --- jobs: threads, GPUs, memory, run time (config datasets.NAME.jobs) -------------------------


def job_setting(kind, rule):
    """A callable giving the `kind` setting (threads, gpu, mem_mb, runtime) of `rule`'s jobs."""
    def setting(wildcards):
        values = DATASETS[wildcards.dataset]["jobs"][kind]
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
    count = DATASETS[wildcards.dataset]["jobs"]["shards"]
    return [f"results/{wildcards.dataset}/{wildcards.folder}/manifest-shard-{i}-of-{count}.json"
            for i in range(1, count + 1)]


# --- stage-specific input functions --------------------------------------------------------------


def cam_folders(dataset):
    """The CAM folders a dataset's run makes: an L2G run's only where the config has that run."""
    runs = l2g_runs(DATASETS[dataset])
    return [folder for folder, model in CAM_MODELS.items() if model not in L2G_RUNS or L2G_RUNS[model] in runs]


def train_subset(dataset):
    """The list of the part of the training split also scored (splits.train_subset), or None."""
    return DATASETS[dataset]["splits"].get("train_subset")


# The scored part of the training split: "" (all of it, miou.json) or _train_subset.
PARTS = f"|_{SUBSET}"


def scored_split(wildcards):
    return "train" if not wildcards.part else SUBSET


def cam_metrics(dataset, part=""):
    """{name: miou.json} of every CAM folder of the dataset (on the scored part of the split)."""
    return {folder: f"results/{dataset}/{folder}/miou{part}.json" for folder in cam_folders(dataset)}


def summary_metrics(dataset, part=""):
    """{name: miou.json} of the earlier stages whose numbers the final miou.json carries: the CAMs,
    the pseudo labels and, with splits.train_subset, both again on that part of the training split."""
    metrics = {**cam_metrics(dataset), "pseudo_labels": f"results/{dataset}/pseudo_labels/miou.json"}
    if train_subset(dataset):
        metrics.update({f"{name}_{SUBSET}": path.replace("miou.json", f"miou_{SUBSET}.json")
                        for name, path in list(metrics.items())})
    return metrics


def stage_metrics(metrics):
    """Input function: {score_NAME: miou.json} of the job's dataset (and scored part)."""
    return lambda wc: {f"score_{name}": path for name, path in metrics(wc.dataset, getattr(wc, "part", "")).items()}


def stage_options(option, metrics):
    """Params function: `--option NAME=miou.json` for each earlier stage of the job's dataset."""
    return lambda wc, input: " ".join(f"--{option} {name}={input[f'score_{name}']}"
                                      for name in metrics(wc.dataset, getattr(wc, "part", "")))


def l2g_options(wildcards):
    """The options of the job's L2G run (l2g_runs: the no-saliency run's on top of train_l2g's)."""
    runs = l2g_runs(DATASETS[wildcards.dataset])
    section = L2G_RUNS[wildcards.l2g]
    if section not in runs:
        fail(f"datasets.{wildcards.dataset}.{section} is not set: no L2G run without saliency")
    return runs[section]


def from_stage1(dataset):
    """Whether stage 2 (L2G and the control) starts from the stage-1 classifier."""
    return DATASETS[dataset]["train_l2g"].get("start", "pretrained") == "stage1"


def start_options(dataset):
    """Stage 1's model options, for a stage-2 run that builds fresh networks (start: pretrained)."""
    if from_stage1(dataset):
        return {}
    return {key: value for key, value in DATASETS[dataset]["train_cls"].items() if key in MODEL_KEYS}


def l2g_flags(wildcards):
    options = {key: value for key, value in l2g_options(wildcards).items() if key != "start"}
    return cli_flags({**start_options(wildcards.dataset), **options})


def control_flags(wildcards):
    l2g = DATASETS[wildcards.dataset]["train_l2g"]
    return cli_flags({**start_options(wildcards.dataset), **{k: v for k, v in l2g.items() if k in CONTROL_KEYS}})


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
    inputs = {"manifest": f"results/{wildcards.dataset}/data/manifest.json"}
    if from_stage1(wildcards.dataset):
        inputs["init"] = f"results/{wildcards.dataset}/cls/model.pt"
    elif init_file(DATASETS[wildcards.dataset]["train_cls"].get("init")):
        inputs["weights"] = DATASETS[wildcards.dataset]["train_cls"]["init"]
    return inputs


def init_from(wildcards, input):
    return f"--init-from {input.init}" if "init" in input.keys() else ""


def weights_input(stage):
    """Input function: the init weights file of `stage`'s section, if it names one."""
    return lambda wc: [path] if (path := init_file(DATASETS[wc.dataset][stage].get("init"))) else []


def refine_background(wildcards, input):
    """--threshold-from the CAM scores, unless the config sets a threshold or an ignore band."""
    refine = DATASETS[wildcards.dataset]["refine"]
    if refine.get("threshold") is None and not refine.get("ignore_band"):
        return f"--threshold-from {input.metrics}"
    return ""


def seg_inputs(wildcards):
    """The pseudo labels (seg only), the stage-1 classifier when init is `stage1`, the init file."""
    inputs = {"manifest": f"results/{wildcards.dataset}/data/manifest.json"}
    if wildcards.model == "seg":
        inputs["labels"] = f"results/{wildcards.dataset}/pseudo_labels/manifest.json"
    init = DATASETS[wildcards.dataset]["train_seg"].get("init")
    if init == "stage1":
        inputs["init"] = f"results/{wildcards.dataset}/cls/model.pt"
    elif init_file(init):
        inputs["weights"] = init
    return inputs


def seg_source(wildcards, input):
    source = f"--labels results/{wildcards.dataset}/pseudo_labels" if wildcards.model == "seg" else "--ground-truth"
    return source + (f" --init {input.init}" if "init" in input.keys() else "")


def seg_flags(wildcards):
    """The train_seg options; `init: stage1` becomes an input (seg_source), not an option."""
    options = DATASETS[wildcards.dataset]["train_seg"]
    return cli_flags({k: v for k, v in options.items() if not (k == "init" and v == "stage1")})


def score_seg_command(model):
    return (f"l2g score-seg --manifest {{input.manifest}} --split val --pred results/{{wildcards.dataset}}/{model}/pred"
            f" {{params.stages}} --out {{output.metrics}} --workers {{threads}} > {{log}} 2>&1")
