# Config validation, wildcard constraints and input functions shared by every rule.
import os
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
