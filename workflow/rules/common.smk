# Config validation, wildcard constraints and input functions shared by every rule.
import os
import shlex
import sys

from l2g_core.config import require_root, validate_config
from l2g_core.errors import L2GError

# Rules call the `l2g` installed beside the Python that runs Snakemake, even when its
# virtual environment is not activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def fail(message):
    """A user mistake in the config: one line, non-zero exit, no traceback."""
    sys.stderr.write(f"l2g-pipeline: config error: {message}\n")
    sys.exit(1)


try:
    validate_config(config)
except L2GError as error:
    fail(error)

DATASETS = config["datasets"]
SYNTHETIC = [name for name, ds in DATASETS.items() if ds["kind"] == "synthetic"]


def one_of(names):
    """A wildcard pattern matching exactly these names (or nothing when there are none)."""
    return "|".join(names) if names else "(?!x)x"


wildcard_constraints:
    dataset=one_of(DATASETS),


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


def cli_flags(options):
    """A config section as `l2g` options: {batch_size: 8, pcm: true} -> '--batch-size 8 --pcm'."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            flags.append(" ".join([flag] + [shlex.quote(str(v)) for v in value]))
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def stage_flags(stage):
    """Input function: the options of `stage` for the dataset of the job."""
    return lambda wildcards: cli_flags(DATASETS[wildcards.dataset][stage])
