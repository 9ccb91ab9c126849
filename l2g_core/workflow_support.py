"""Plain functions the Snakemake workflow uses (workflow/rules/common.smk), kept here to be tested."""

import os
import shlex
import sys


def job_environment(repo, environ=os.environ):
    """Let every job's `l2g` run this repository's l2g_core: the `l2g` installed beside the Python
    that runs Snakemake (its virtual environment need not be activated) or, inside a conda
    environment made from envs/l2g.yaml, which holds only the dependencies, workflow/bin/l2g with
    the repository on PYTHONPATH. Changes `environ`, which jobs inherit."""
    path = [os.path.join(repo, "workflow", "bin"), os.path.dirname(sys.executable), environ.get("PATH", "")]
    environ["PATH"] = os.pathsep.join(path)
    environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(repo), environ.get("PYTHONPATH")] if p)


def cli_flags(options):
    """A config section as `l2g` options: {batch_size: 8, pcm: true} -> '--batch-size 8 --pcm'.

    None leaves the option out (the command's default); lists become several values."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            flags.append(" ".join([flag] + [shlex.quote(str(v)) for v in value]))
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def current_outputs(dag, results="results"):
    """{dataset: {product}} of the outputs a finished Snakemake run leaves current: those of every
    job of its DAG that ran or had no reason to run (a job left out by --until is neither)."""
    from l2g_core.pipeline import product_of

    current = {}
    for job in dag.jobs:
        dataset = job.wildcards_dict.get("dataset")
        if dataset is None or not dag.noneedrun_finished(job):
            continue
        prefix = f"{results}/{dataset}/"
        for path in map(str, job.output):
            if path.startswith(prefix):
                current.setdefault(dataset, set()).add(product_of(path[len(prefix):]))
    return current


def record_outputs(current, settings, owner, results="results"):
    """results/{dataset}/config.yaml: what each output of the folder was made with, as the runs that
    made it resolved it: {product: {settings, inputs: {product: the dataset folder it was read from}}}, and
    the package versions. Outputs this run left current are (re)written; the others keep their
    record, so after `--until train_l2g` the file says nothing new of pseudo_labels/.

    current: {dataset: {product}} (current_outputs); settings(dataset): its settings;
    owner(dataset, product): the dataset whose folder holds the product for it."""
    from importlib.metadata import version
    from pathlib import Path

    import yaml

    from l2g_core.io_utils import write_text
    from l2g_core.pipeline import products
    from l2g_core.versions import software_versions

    versions = {**software_versions(), **{name: version(name) for name in ("snakemake", "pydensecrf2")}}
    for dataset, names in current.items():
        path = Path(results) / dataset / "config.yaml"
        made = products(settings(dataset))
        outputs = (yaml.safe_load(path.read_text()) or {}).get("outputs", {}) if path.is_file() else {}
        for name in sorted(names & set(made)):
            own, inputs = made[name]
            outputs[name] = {"settings": own,
                             "inputs": {i: f"{results}/{owner(dataset, i)}" for i in inputs}}
        write_text(path, yaml.safe_dump({"dataset": dataset, "outputs": outputs, "versions": versions},
                                        sort_keys=False))
