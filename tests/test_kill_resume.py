"""Kill and resume (issue 7, points 2 and 3): a stage killed part-way (SIGTERM or SIGKILL), then
run again, ends with the same files as an uninterrupted run, and never leaves a file under its
final name that is not complete.

The stages run as real `l2g` subprocesses that die at a chosen point: KILLER wraps one function of
the package (a writer, the checkpoint) so that its N-th call sends the process the signal, after
the call or half-way through the bytes it writes. The rerun is the same command. The workflow
test kills a real Snakemake run from outside while its shard jobs run.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from PIL import Image

from l2g_core.cam_io import load_cams
from l2g_core.cli import main
from l2g_core.io_utils import write_json
from l2g_core.workflow_support import cli_flags

from conftest import BIN, REPO, run_snakemake, tiny_classifier, tiny_config

KILLER = r"""
import io, os, signal, sys
from importlib import import_module

target, call, sig, when = sys.argv[1:5]
module_name, _, attribute = target.partition(":")
owner = import_module(module_name)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
calls = 0


def hooked(*args, **kwargs):
    global calls
    calls += 1
    if calls != int(call):
        return original(*args, **kwargs)
    if when == "mid":  # write half of what the call writes to its file argument, then die
        index = next(i for i, a in enumerate(args) if isinstance(a, (str, os.PathLike)) or hasattr(a, "write"))
        buffer = io.BytesIO()
        original(*args[:index], buffer, *args[index + 1:], **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if hasattr(args[index], "write"):
            args[index].write(half)
            args[index].flush()
        else:
            with open(args[index], "wb") as handle:
                handle.write(half)
        os.kill(os.getpid(), getattr(signal, sig))
    result = original(*args, **kwargs)
    os.kill(os.getpid(), getattr(signal, sig))
    return result


setattr(owner, name, hooked)
from l2g_core.cli import main
sys.exit(main(sys.argv[5:]))
"""


def killed(target, call, sig, when, argv):
    """Run `l2g ARGV` in a subprocess that gets `sig` at the `call`-th call of `target`
    ("module:attribute"), after that call returns or (when="mid") half-way through its writing."""
    result = subprocess.run([sys.executable, "-c", KILLER, target, str(call), sig.name, when, *argv],
                            capture_output=True, text=True)
    assert result.returncode == -sig, (result.returncode, result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A prepared tiny dataset (6 training images of 64 px) and a classifier trained on it."""
    return tiny_classifier(tmp_path_factory.mktemp("kill"), train=6, val=2)


def same_files(folder_a, folder_b, pattern):
    names = sorted(p.name for p in folder_a.glob(pattern))
    assert names and names == sorted(p.name for p in folder_b.glob(pattern))
    return all((folder_a / n).read_bytes() == (folder_b / n).read_bytes() for n in names)


# --- a training stage: DeepLab with an iteration budget ------------------------------------------


def train_seg(manifest, out):
    # 6 images, batch 2: 3 updates per epoch, so 7 iterations are 3 epochs (the last one partial)
    return ["train-seg", "--manifest", str(manifest), "--ground-truth", "--backbone", "small", "--crop-size", "32",
            "--iterations", "7", "--batch-size", "2", "--lr", "0.01", "--schedule", "poly", "--seed", "3",
            "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def straight_seg(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "model.pt"
    assert main(train_seg(dataset[0], out)) == 0
    return out


@pytest.mark.parametrize("sig, kill_at", [
    (signal.SIGTERM, ("l2g_core.training:Trainer.save_checkpoint", 1, "after")),  # after the epoch-1 checkpoint
    (signal.SIGKILL, ("torch:save", 2, "mid")),  # half-way through writing the epoch-2 checkpoint
], ids=["SIGTERM after the first checkpoint", "SIGKILL while writing the second"])
def test_training_killed_resumes_from_its_checkpoint_and_ends_bit_identical(dataset, straight_seg, tmp_path,
                                                                           capsys, sig, kill_at):
    out = tmp_path / "seg" / "model.pt"
    target, call, when = kill_at
    killed(target, call, sig, when, train_seg(dataset[0], out))
    assert not out.exists()
    checkpoint = torch.load(out.parent / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 0  # the complete epoch-1 checkpoint, whatever came after it
    if when == "mid":
        assert [p.name.startswith(".checkpoint.pt.") for p in out.parent.glob(".*.tmp")] == [True]

    capsys.readouterr()
    assert main(train_seg(dataset[0], out)) == 0  # the same command again
    assert f"resumed from {out.parent / 'checkpoint.pt'} after epoch 1" in capsys.readouterr().out
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (straight_seg, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out.parent / "train_log.csv").read_text() == (straight_seg.parent / "train_log.csv").read_text()
    assert not list(out.parent.glob(".*.tmp"))  # the half-written checkpoint of the killed run is gone


def test_an_unreadable_checkpoint_is_ignored_not_a_crash(dataset, straight_seg, tmp_path, capsys):
    """A machine that crashed right after the rename may leave an empty checkpoint: train anew."""
    out = tmp_path / "seg" / "model.pt"
    out.parent.mkdir()
    (out.parent / "checkpoint.pt").write_bytes(b"")
    assert main(train_seg(dataset[0], out)) == 0
    assert "checkpoint.pt: unreadable (" in capsys.readouterr().out
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (straight_seg, out))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- per-image stages: CAM export and CRF refinement ----------------------------------------------


def export(manifest, classifier, out):
    return ["export-cams", "--manifest", str(manifest), "--model", str(classifier), "--out", str(out),
            "--scales", "0.5", "1.0", "--batch-size", "1", "--device", "cpu"]


def refine(manifest, cams, out):
    return ["refine", "--manifest", str(manifest), "--cams", str(cams), "--out", str(out), "--threshold", "0.3",
            "--crf", "--workers", "1"]


@pytest.fixture(scope="module")
def straight_cams(dataset, tmp_path_factory):
    manifest, classifier = dataset
    folder = tmp_path_factory.mktemp("straight_cams")
    assert main(export(manifest, classifier, folder / "cams")) == 0
    assert main(refine(manifest, folder / "cams", folder / "labels")) == 0
    return folder


def test_cam_export_killed_mid_file_leaves_only_complete_files_and_reruns_to_the_same_folder(
        dataset, straight_cams, tmp_path):
    manifest, classifier = dataset
    out = tmp_path / "cams"
    killed("numpy:savez_compressed", 3, signal.SIGKILL, "mid", export(manifest, classifier, out))
    finished = sorted(out.glob("*.npz"))
    assert len(finished) == 2 and not (out / "manifest.json").exists()  # incomplete, and says so
    for path in finished:  # every file under its final name is whole
        cams, classes = load_cams(path)
        assert cams.shape == (len(classes), 64, 64)
    assert len(list(out.glob(".*.npz.*.tmp"))) == 1  # the half-written one, under a hidden name

    assert main(export(manifest, classifier, out)) == 0
    assert same_files(straight_cams / "cams", out, "*.npz")
    assert json.loads((out / "manifest.json").read_text()) == json.loads(
        (straight_cams / "cams" / "manifest.json").read_text())


def test_refine_killed_part_way_reruns_to_the_same_labels(dataset, straight_cams, tmp_path):
    manifest, _ = dataset
    cams, out = straight_cams / "cams", tmp_path / "labels"
    killed("l2g_core.stages.refine:write_label_png", 2, signal.SIGTERM, "after", refine(manifest, cams, out))
    finished = sorted(out.glob("*.png"))
    assert len(finished) == 2 and not (out / "manifest.json").exists()
    for path in finished:
        with Image.open(path) as image:
            image.load()
            assert image.size == (64, 64)

    assert main(refine(manifest, cams, out)) == 0
    assert same_files(straight_cams / "labels", out, "*.png")
    assert json.loads((out / "manifest.json").read_text()) == json.loads(
        (straight_cams / "labels" / "manifest.json").read_text())


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    """Written through a temporary file, yet readable by the group as any file would be."""
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


# --- the workflow: a Snakemake run killed while its shard jobs run --------------------------------

TARGET = "results/demo/cls_cams/miou.json"
SHARDS = 3  # on 2 cores: shard 3 waits while 1 and 2 run


def shard_jobs(log):
    """{jobid: shard} of the export_cams jobs a Snakemake output announces."""
    jobs = {}
    for block in re.split(r"\n(?=\S*rule )", log):
        if re.match(r"\S*rule export_cams:", block):
            shard = re.search(r"output: results/demo/cls_cams/manifest-shard-(\d+)-of-\d+\.json", block)
            jobid = re.search(r"jobid: (\d+)", block)
            jobs[int(jobid.group(1))] = int(shard.group(1))
    return jobs


def session_processes(sid):
    """Pids of the processes of session `sid` (a Snakemake run started in a new session)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name)": state, ppid, pgrp, session
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def kill_session(sid):
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def uninterrupted_cam_stage(work, config, out):
    """The jobs of the CAM stage run one after the other, as the rules run them (same shards, one
    thread each, same options), on the dataset and classifier of the workflow in `work`."""
    data, options = work / "results/demo/data/manifest.json", config["datasets"]["demo"]["export_cams"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OMP_NUM_THREADS=1, as the rule's threads: 1 sets it
    try:
        for shard in range(1, SHARDS + 1):
            assert main(["export-cams", "--manifest", str(data), "--model", str(work / "results/demo/cls/model.pt"),
                         "--split", "train", "--out", str(out), "--shard", f"{shard}/{SHARDS}",
                         *shlex.split(cli_flags(options))]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["gather", "--manifest", str(data), "--split", "train", "--folder", str(out),
                 "--shards", str(SHARDS)]) == 0
    assert main(["evaluate", "--manifest", str(data), "--split", "train", "--kind", "cam", "--pred", str(out),
                 "--out", str(out / "miou.json")]) == 0


def sharded_config():
    config = tiny_config()
    config["datasets"]["demo"]["jobs"]["shards"] = SHARDS
    return config


def start_snakemake(work, config):
    """Snakemake on TARGET in `work`, in a session of its own, its output piped."""
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--workflow-profile", str(REPO / "profiles" / "default"),
               "--cores", "2", TARGET]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


@pytest.mark.slow
def test_snakemake_killed_during_the_shards_redoes_only_the_unfinished_ones(tmp_path):
    """The tiny demo up to the stage-1 CAM scores (synthetic data, prepare, stage 1, CAM export in
    3 shards, gather, evaluate: the whole chain takes minutes per run on 2 cores), killed with
    SIGKILL, Snakemake and its jobs, as soon as the first shard is done, then resumed; the scores
    and CAM files equal those of the same jobs run uninterrupted in another folder."""
    work, config = tmp_path / "killed", sharded_config()
    process = start_snakemake(work, config)
    log = ""
    try:
        for line in process.stdout:  # kill the run, jobs and all, as soon as the first shard is done
            log += line
            if re.match(r"Finished jobid: \d+ \(Rule: export_cams\)", line):
                kill_session(process.pid)
                break
        log += process.stdout.read()
    finally:
        kill_session(process.pid)
        process.wait()
    deadline = time.time() + 30
    while session_processes(process.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert process.returncode == -signal.SIGKILL, log[-3000:]
    jobs = shard_jobs(log)
    finished = {jobs[int(j)] for j in re.findall(r"Finished jobid: (\d+) \(Rule: export_cams\)", log)}
    present = {s for s in range(1, SHARDS + 1)
               if (work / f"results/demo/cls_cams/manifest-shard-{s}-of-{SHARDS}.json").exists()}
    assert finished and len(present) < SHARDS and not (work / TARGET).exists()

    # A killed Snakemake leaves its lock: --unlock, then the same command.
    run_snakemake(work, "--unlock", config=config)
    again = run_snakemake(work, "--cores", "2", TARGET, config=config)
    redone = set(shard_jobs(again.stdout + again.stderr).values())
    assert redone and not redone & finished  # the shards finished before the kill stay as they are
    assert redone >= set(range(1, SHARDS + 1)) - present  # every shard without its manifest is redone

    straight = tmp_path / "straight" / "cls_cams"
    uninterrupted_cam_stage(work, config, straight)
    assert (work / TARGET).read_bytes() == (straight / "miou.json").read_bytes()
    assert same_files(straight, work / "results/demo/cls_cams", "*.npz")
    merged = [json.loads((folder / "manifest.json").read_text()) for folder in (straight, work / "results/demo/cls_cams")]
    assert merged[0]["ids"] == merged[1]["ids"] and merged[0]["files"] == merged[1]["files"]


@pytest.mark.slow
def test_snakemake_on_sigterm_lets_running_jobs_finish_starts_none_and_unlocks(tmp_path):
    """What a scheduler sends at its time limit: SIGTERM to Snakemake alone, while the first two of
    three CAM shards run (2 cores). The README's claim: it starts nothing new, lets the running jobs
    finish, releases its lock; then the same command, without --unlock, does the rest."""
    work, config = tmp_path / "terminated", sharded_config()
    process = start_snakemake(work, config)
    log, started = "", 0
    try:
        for line in process.stdout:
            log += line
            started += bool(re.match(r"\S*rule export_cams:", line))
            if started == 2:  # two shards running, the third waiting for a core
                process.send_signal(signal.SIGTERM)
                break
        log += process.stdout.read()
        process.wait(timeout=600)
    finally:
        kill_session(process.pid)
    jobs = shard_jobs(log)
    finished = {jobs[int(j)] for j in re.findall(r"Finished jobid: (\d+) \(Rule: export_cams\)", log)}
    present = {s for s in range(1, SHARDS + 1)
               if (work / f"results/demo/cls_cams/manifest-shard-{s}-of-{SHARDS}.json").exists()}
    assert process.returncode != 0 and not (work / TARGET).exists(), log[-3000:]
    assert len(jobs) == 2, log[-3000:]  # the third shard was never started
    assert finished == present == set(jobs.values()), log[-3000:]  # the two running ones finished
    assert not session_processes(process.pid)
    again = run_snakemake(work, "--cores", "2", TARGET, config=config)  # no --unlock needed
    assert set(shard_jobs(again.stdout + again.stderr).values()) == set(range(1, SHARDS + 1)) - present
    assert (work / TARGET).is_file()
