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

from conftest import BIN, REPO, run_snakemake, tiny_config

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


class _Resources(dict):
    __getattr__ = dict.__getitem__


def _planned_resources(workdir, slurm):
    """{rule: resources} of the jobs of a dry run of the demo chain to its CAMs with `slurm` as
    the profile's `config:` block passes it (through Snakemake's own profile and --config
    parsers), train_l2g given 2 GPUs and train_cls 1, the other rules none."""
    from snakemake.cli import parse_config
    from snakemake.profiles import ProfileConfigFileParser

    profile = PROFILE / "config.yaml"
    entries = ProfileConfigFileParser().parse(profile.open())["config"]
    shipped = parse_config(entries)
    assert shipped == {"slurm": {"partition": "", "gpu_partition": "", "account": "", "gpu_account": "", "gres": ""}}
    config = tiny_config()
    config["datasets"]["demo"]["jobs"]["gpu"] = {"default": 0, "train_cls": 1, "train_l2g": 2}
    config["slurm"] = dict(shipped["slurm"], **slurm)
    dry = run_snakemake(workdir, "-n", "-p", "--cores", "8", "--", "results/demo/cams/manifest.json", config=config)
    planned, commands = {}, {}
    for block in dry.stdout.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and resources:
            values = dict(item.split("=", 1) for item in resources.group(1).split(", "))
            defaults = yaml.safe_load((PROFILE / "config.yaml").read_text())["default-resources"]
            planned[rule.group(1)] = _Resources(defaults, **{k: int(v) if v.isdigit() else v  # the rule's win
                                                             for k, v in values.items()})
            planned[rule.group(1)]["cpus_per_task"] = 8  # `threads`, as evaluated
            shell = re.search(r"^Shell command: (.*)$", block, re.M)
            commands[rule.group(1)] = shell.group(1) if shell else ""
    return planned, commands


def _sbatch(resources, monkeypatch):
    """The sbatch command line the SLURM executor plugin builds for a job with these resources
    (its partition and account choice, get_submit_command and set_gres_string; no cluster asked)."""
    from types import SimpleNamespace

    import snakemake_executor_plugin_slurm as plugin
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    monkeypatch.setattr(plugin, "validate_account", lambda account, logger: account)
    job = SimpleNamespace(resources=resources, threads=8, is_group=lambda: False)
    # the executor's own choice, with no partition file and no cluster to ask for a default
    executor = SimpleNamespace(_partitions=None, _fallback_partition="", _fallback_account_arg="", logger=None)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule", "workdir": ".",
              "account": next(plugin.Executor.get_account_arg(executor, job)),
              "partition": plugin.Executor.get_partition_arg(executor, job)}
    return get_submit_command(job, params) + set_gres_string(job)


def test_gpu_jobs_go_to_the_gpu_partition_and_account(tmp_path, monkeypatch):
    planned, commands = _planned_resources(tmp_path, {"partition": "cpu", "gpu_partition": "gpu",
                                                      "account": "lab", "gpu_account": "lab-gpu"})
    l2g, cls, prepare = (_sbatch(planned[rule], monkeypatch) for rule in ("train_l2g", "train_cls", "prepare"))
    assert " -p gpu " in l2g and " -A lab-gpu " in l2g and " --gpus=2" in l2g and "--gres" not in l2g
    assert " -p gpu " in cls and " -A lab-gpu " in cls and " --gpus=1" in cls
    assert " -p cpu " in prepare and " -A lab " in prepare and "--gpus" not in prepare
    assert "with-gpus --count 2 --ddp" in commands["train_l2g"]
    # the shipped, empty block changes nothing: the cluster's default partition, the plugin's account guess
    planned, _ = _planned_resources(tmp_path / "shipped", {})
    l2g = _sbatch(planned["train_l2g"], monkeypatch)
    assert "slurm_partition" not in planned["train_l2g"] and " -p " not in l2g and " -A " not in l2g
    assert l2g.endswith(" --gpus=2")


def test_the_gres_form_replaces_gpus(tmp_path, monkeypatch):
    # SLURM rejects --gres and --gpus together: the gres form sends --gres=TYPE:N alone
    planned, commands = _planned_resources(tmp_path, {"gpu_partition": "gpu", "gres": "gpu:a100"})
    l2g, cls, prepare = (_sbatch(planned[rule], monkeypatch) for rule in ("train_l2g", "train_cls", "prepare"))
    assert l2g.endswith(" --gres=gpu:a100:2") and "--gpus" not in l2g and " -p gpu " in l2g
    assert cls.endswith(" --gres=gpu:a100:1") and "--gpus" not in cls
    assert "--gres" not in prepare and "--gpus" not in prepare and " -p " not in prepare
    assert " --nodes=1" in l2g and " --ntasks" not in l2g  # still a GPU job to the plugin: one node
    # the job still claims its GPUs and splits its threads over them
    assert "OMP_NUM_THREADS=2 l2g with-gpus --count 2 --ddp -- l2g train-l2g" in commands["train_l2g"]
    assert "l2g with-gpus --count 1 --ddp -- l2g train-cls" in commands["train_cls"]
    assert "l2g with-gpus --count 0 -- l2g export-cams" in commands["export_cams"]
    assert " --workers 0 " in commands["train_l2g"]  # 2 threads over 2 GPUs: 1 each, none to spare


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
