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


def write_resolved_configs(config, results="results"):
    """results/{dataset}/config.yaml after a successful run: the dataset's settings as this run
    resolved them (config file, --configfile, --config) and the package versions. Changed settings
    rerun their stages, so after a successful run this file describes every output beside it."""
    from importlib.metadata import version
    from pathlib import Path

    import yaml

    from l2g_core.io_utils import write_text
    from l2g_core.versions import software_versions

    versions = {**software_versions(), **{name: version(name) for name in ("snakemake", "pydensecrf2")}}
    for name, section in config["datasets"].items():
        folder = Path(results) / name
        if folder.is_dir():
            write_text(folder / "config.yaml", yaml.safe_dump(
                {"dataset": name, "settings": section, "versions": versions}, sort_keys=False))
