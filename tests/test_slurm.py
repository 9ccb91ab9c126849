"""The SLURM profile on a real one-node SLURM cluster started on this machine (tests/slurm/).

Needs root (the daemons, apt-get for slurm-wlm and munge when they are missing); skipped only
when not root or when the packages are missing and apt-get is not there. CI installs the packages
first (.ci/run). The cluster has no accounting database, so the run adds
`--slurm-status-command squeue` to profiles/slurm.
"""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, tiny_config

pytestmark = pytest.mark.slow  # a SLURM cluster and the demo chain through it

SLURM_SCRIPTS = REPO / "tests" / "slurm"
SLURM_DIR = Path(os.environ.get("L2G_SLURM_DIR", "/tmp/l2g-slurm"))
PROFILE = REPO / "profiles" / "slurm"
TARGET = "results/demo/cams/manifest.json"
RULES = ("make_synthetic", "prepare", "train_cls", "train_l2g", "export_cams")
TIMEOUT_S = 1800


def _packages_installed():
    return all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))


def _cluster_answers():
    return shutil.which("scontrol") is not None and subprocess.run(
        ["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0


def _run(command, timeout=60):
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        return (result.stdout + result.stderr).strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"({' '.join(command)}: {error})"


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


@pytest.fixture(scope="module")
def slurm_partition():
    """Start the test cluster (idempotent); stop it afterwards if this fixture started it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (daemons as root, apt-get install slurm-wlm munge)")
    if not _packages_installed() and shutil.which("apt-get") is None:
        pytest.skip("slurm-wlm/munge are not installed and apt-get is not available to install them")
    was_running = _cluster_answers()
    started = subprocess.run(["bash", str(SLURM_SCRIPTS / "start.sh")], capture_output=True, text=True,
                             timeout=1200)
    assert started.returncode == 0, (
        f"tests/slurm/start.sh failed ({started.returncode}):\n{started.stdout[-3000:]}\n{started.stderr[-5000:]}")
    partition = started.stdout.strip().splitlines()[-1]
    yield partition
    if not was_running:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop.sh")], capture_output=True, timeout=120)


def _profile_default_resources(**overrides):
    """profiles/slurm's default-resources with some values replaced, as `--default-resources` args."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = dict(profile["default-resources"], **overrides)
    return [f"{name}={value}" for name, value in resources.items()]


def _diagnostics(workdir, stdout, stderr):
    """Everything worth reading when the SLURM run fails."""
    parts = [f"--- snakemake stdout (tail)\n{stdout[-3000:]}", f"--- snakemake stderr (tail)\n{stderr[-6000:]}",
             f"--- squeue\n{_run(['squeue', '--states=all', '-o', '%i|%j|%T|%r|%k'])}",
             f"--- sinfo\n{_run(['sinfo', '-N', '-l'])}",
             f"--- {SLURM_DIR}/jobcomp.log\n{_tail(SLURM_DIR / 'jobcomp.log', 20)}",
             f"--- {SLURM_DIR}/slurmctld.log\n{_tail(SLURM_DIR / 'slurmctld.log')}",
             f"--- {SLURM_DIR}/slurmd.log\n{_tail(SLURM_DIR / 'slurmd.log')}"]
    for log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
        parts.append(f"--- {log.relative_to(workdir)}\n{_tail(log, 30)}")
    return "\n".join(parts)


def test_every_job_asks_for_one_node():
    # without --nodes, SLURM may place a 2-GPU job's GPUs on two nodes, where one process sees none
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    class Resources(dict):
        __getattr__ = dict.__getitem__

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = Resources(profile["default-resources"], gpu=2, cpus_per_task=8)  # `threads`, as evaluated
    job = SimpleNamespace(resources=resources, threads=8, is_group=lambda: False)
    call = get_submit_command(job, {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule train_l2g",
                                    "account": "", "partition": "", "workdir": "."})
    assert " --nodes=1" in call


def test_slurm_profile_runs_every_stage_as_a_slurm_job(slurm_partition, tmp_path):
    workdir = tmp_path
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config()))
    node_cpus = int(_run(["sinfo", "-h", "-p", slurm_partition, "-o", "%c"]).split()[0])
    command = [
        str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(config_path), "--workflow-profile", str(REPO / "profiles" / "default"),
        "--profile", str(PROFILE),
        # the test cluster: no accounting database (sacct cannot answer), its own partition,
        # a small node; finished jobs' SLURM logs kept for the checks below
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "3",
        "--slurm-keep-successful-logs",
        "--max-threads", str(node_cpus),
        "--default-resources", *_profile_default_resources(slurm_partition=slurm_partition, mem_mb=1000),
        "--", TARGET,
    ]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=workdir)
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # snakemake cancels its SLURM jobs (scancel)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"snakemake --profile profiles/slurm ran over {TIMEOUT_S} s\n"
                    + _diagnostics(workdir, stdout, stderr))
    elapsed = time.monotonic() - started
    assert process.returncode == 0, (f"snakemake --profile profiles/slurm failed ({process.returncode})\n"
                                     + _diagnostics(workdir, stdout, stderr))
    print(f"\nSLURM run of {TARGET}: {elapsed:.0f} s")

    # the outputs
    results = workdir / "results" / "demo"
    for output in ("data/manifest.json", "cls/model.pt", "l2g/model.pt", "cams/manifest.json"):
        assert (results / output).is_file(), f"missing {output}\n" + _diagnostics(workdir, stdout, stderr)

    # every job went through sbatch: the plugin's run id names the SLURM jobs, each job wrote its
    # SLURM log under .snakemake/slurm_logs/rule_<rule>/, and slurmctld lists it as completed
    match = re.search(r"SLURM run ID: (\S+)", stdout + stderr)
    assert match, "no SLURM run ID in snakemake's output\n" + _diagnostics(workdir, stdout, stderr)
    run_id = match.group(1)
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", stdout + stderr))
    logs = workdir / ".snakemake" / "slurm_logs"
    job_ids = {}
    for rule in RULES:
        rule_logs = sorted((logs / f"rule_{rule}").rglob("*.log"))
        assert rule_logs, f"no SLURM log of rule {rule} under {logs}\n" + _diagnostics(workdir, stdout, stderr)
        for log in rule_logs:
            assert log.stem.isdigit() and log.stem in submitted, f"{log} is not the log of a submitted job"
            assert f"rule {rule}:" in log.read_text(errors="replace"), f"{log} does not run rule {rule}"
            job_ids[log.stem] = rule
    completions = {}
    for line in (SLURM_DIR / "jobcomp.log").read_text().splitlines():
        fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if fields.get("Name") == run_id:
            completions[fields["JobId"]] = fields
    assert set(completions) == set(submitted), (
        f"slurmctld's completed jobs of run {run_id} {sorted(completions)} != submitted {sorted(submitted)}")
    for job_id, fields in completions.items():
        assert fields["JobState"] == "COMPLETED" and fields["Partition"] == slurm_partition, fields
    print(f"SLURM jobs: {', '.join(f'{job_id} ({rule})' for job_id, rule in sorted(job_ids.items(), key=lambda x: int(x[0])))}")
