"""GPU claims: `l2g with-gpus` gives each job distinct devices and frees them however it ends.

Real processes and real flock locks throughout; L2G_FAKE_GPUS pretends devices on a CPU machine,
and every test keeps its lock folder in tmp_path.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2g_core import gpus
from l2g_core.errors import L2GError
from l2g_core.stages.with_gpus import ddp_command

from conftest import BIN, run_snakemake, tiny_config

L2G = str(BIN / "l2g")


def gpu_env(tmp_path, fake=2, **extra):
    """The test's environment without any real device setting, with `fake` devices and private locks."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpus.FAKE_ENV, gpus.LOCK_DIR_ENV)}
    env.update({gpus.FAKE_ENV: str(fake), gpus.LOCK_DIR_ENV: str(tmp_path / "locks"),
                "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    env.update(extra)
    return env


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def jobs(tmp_path):
    """Start held jobs: `l2g with-gpus` whose child writes "CUDA_VISIBLE_DEVICES PID" to NAME.out
    and then runs until NAME.go exists. Each job is a session of its own, killed at teardown."""
    started = []

    def start(name, count=1, env=None, wait_timeout=None):
        child = (f'echo "$CUDA_VISIBLE_DEVICES $$" > {name}.tmp && mv {name}.tmp {name}.out; '
                 f'while [ ! -e {name}.go ]; do sleep 0.05; done')
        timeout = ["--wait-timeout", str(wait_timeout)] if wait_timeout is not None else []
        with open(tmp_path / f"{name}.err", "w") as err:
            proc = subprocess.Popen([L2G, "with-gpus", "--count", str(count), *timeout, "--", "sh", "-c", child],
                                    cwd=tmp_path, env=env or gpu_env(tmp_path), stderr=err, start_new_session=True)
        started.append(proc)
        return proc

    def claimed(name):
        """(devices, child pid) once the job's child runs."""
        out = tmp_path / f"{name}.out"
        wait_for(out.exists, what=f"{name} to start")
        devices, pid = out.read_text().split()
        return devices.split(","), int(pid)

    def release(name, proc):
        (tmp_path / f"{name}.go").touch()
        assert proc.wait(timeout=15) == 0

    yield start, claimed, release
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the job's session: wrapper and child
        except ProcessLookupError:
            pass
        proc.wait()


def with_gpus(tmp_path, *args, env=None):
    return subprocess.run([L2G, "with-gpus", *args], check=False, cwd=tmp_path, env=env or gpu_env(tmp_path),
                          capture_output=True, text=True, timeout=60)


# --- visible devices and the lock folder (pure) ---

@pytest.mark.parametrize("value, expected", [
    ("0,1", ["0", "1"]),
    ("2, 3", ["2", "3"]),
    ("GPU-8f2a-11,GPU-0b7c-22", ["GPU-8f2a-11", "GPU-0b7c-22"]),
    ("", []),
    ("-1", []),
    ("1,-1,2", ["1"]),
])
def test_cuda_visible_devices_entries(value, expected):
    devices, source = gpus.visible_devices({"CUDA_VISIBLE_DEVICES": value, gpus.FAKE_ENV: "8"})
    assert devices == expected
    assert source.startswith("CUDA_VISIBLE_DEVICES=")


def test_fake_devices_when_cuda_visible_devices_is_unset():
    assert gpus.visible_devices({gpus.FAKE_ENV: "3"}) == (["0", "1", "2"], "L2G_FAKE_GPUS=3")
    assert gpus.visible_devices({gpus.FAKE_ENV: "0"})[0] == []
    with pytest.raises(L2GError, match="L2G_FAKE_GPUS='two'"):
        gpus.visible_devices({gpus.FAKE_ENV: "two"})


def test_devices_from_nvidia_smi_or_none(tmp_path):
    assert gpus.visible_devices({"PATH": str(tmp_path)})[0] == []  # no nvidia-smi on PATH
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)'\n"
                   "echo '  MIG 1g.10gb     Device  0: (UUID: MIG-bbbb)'\n"
                   "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-cccc)'\n")
    smi.chmod(0o755)
    assert gpus.visible_devices({"PATH": str(tmp_path)}) == (["0", "1"], "nvidia-smi -L")


def test_lock_folder_shared_by_every_user_and_per_slurm_allocation(tmp_path):
    # per user, two users' jobs on one box would both take GPU 0
    assert gpus.lock_dir({}) == Path("/tmp/l2g-gpu-locks")
    assert gpus.lock_dir({"SLURM_JOB_ID": "4242"}) == Path("/tmp/l2g-gpu-locks-4242")
    assert gpus.lock_dir({gpus.LOCK_DIR_ENV: str(tmp_path / "l")}) == tmp_path / "l"
    assert gpus.lock_dir({gpus.LOCK_DIR_ENV: str(tmp_path / "l"), "SLURM_JOB_ID": "7"}) == tmp_path / "l-7"
    assert gpus.lock_path(tmp_path, "MIG-GPU-ab/1/0").name == "gpu-MIG-GPU-ab_1_0.lock"


def test_the_lock_folder_and_files_are_open_to_every_user(tmp_path):
    old = os.umask(0o077)  # the strictest usual umask: the modes are set after creation
    try:
        with gpus.try_claim(["0", "1"], 2, tmp_path / "locks") as claimed:
            assert claimed.devices == ["0", "1"]
    finally:
        os.umask(old)
    assert (tmp_path / "locks").stat().st_mode & 0o7777 == 0o1777  # as /tmp: sticky, writable by all
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "locks").iterdir()} == \
        {"gpu-0.lock": 0o666, "gpu-1.lock": 0o666, "gpu-0.busy": 0o666, "gpu-1.busy": 0o666}


def test_claims_work_where_flock_is_emulated_with_fcntl_locks(tmp_path, monkeypatch):
    # NFS clients emulate flock with fcntl byte-range locks, and an exclusive one needs the file
    # open for writing (a read-only descriptor gets EBADF)
    import fcntl

    monkeypatch.setattr(gpus.fcntl, "flock", lambda fd, operation: fcntl.lockf(fd, operation))
    with gpus.try_claim(["0"], 1, tmp_path) as claimed:
        assert claimed.devices == ["0"]


def test_the_default_wait_is_bounded(tmp_path):
    assert gpus.wait_timeout({}) == gpus.DEFAULT_WAIT_SECONDS == 7200
    assert gpus.wait_timeout({gpus.WAIT_ENV: "30"}) == 30 and gpus.wait_timeout({gpus.WAIT_ENV: "inf"}) == float("inf")
    with pytest.raises(L2GError, match=r"^L2G_GPU_WAIT_TIMEOUT='soon': expected seconds"):
        gpus.wait_timeout({gpus.WAIT_ENV: "soon"})


def test_claims_in_one_process_are_all_or_nothing(tmp_path):
    first = gpus.try_claim(["0", "1", "2"], 2, tmp_path)
    assert first.devices == ["0", "1"]
    assert gpus.try_claim(["0", "1", "2"], 2, tmp_path) is None  # only "2" is free: nothing is kept
    with gpus.try_claim(["0", "1", "2"], 1, tmp_path) as second:
        assert second.devices == ["2"]
    first.release()
    assert gpus.try_claim(["0", "1", "2"], 3, tmp_path).devices == ["0", "1", "2"]


# --- l2g with-gpus, real processes ---

def test_concurrent_jobs_get_distinct_devices_and_a_third_waits(tmp_path, jobs):
    start, claimed, release = jobs
    a, b = start("a"), start("b")
    (device_a, _), (device_b, _) = claimed("a"), claimed("b")
    assert sorted(device_a + device_b) == ["0", "1"]
    assert "claimed GPU(s)" in (tmp_path / "a.err").read_text()

    c = start("c")
    wait_for(lambda: "waiting for 1 free GPU(s)" in (tmp_path / "c.err").read_text(), what="c to wait")
    assert not (tmp_path / "c.out").exists()
    release("a", a)
    assert claimed("c")[0] == device_a
    assert (tmp_path / "c.err").read_text().count("waiting") == 1
    release("b", b)
    release("c", c)


def show_claimed(tmp_path, env, *options):
    """`l2g with-gpus OPTIONS` around a child that prints the devices it was given."""
    return with_gpus(tmp_path, *options, "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES", env=env)


def test_killed_job_and_child_free_their_device(tmp_path, jobs):
    start, claimed, _ = jobs
    env = gpu_env(tmp_path, fake=1)
    a = start("a", env=env)
    assert claimed("a")[0] == ["0"]
    os.killpg(a.pid, signal.SIGKILL)  # wrapper and child
    a.wait()
    result = show_claimed(tmp_path, env, "--count", "1", "--wait-timeout", "5")
    assert (result.returncode, result.stdout) == (0, "0\n")


def test_claim_lasts_while_the_child_outlives_a_killed_wrapper(tmp_path, jobs):
    start, claimed, _ = jobs
    env = gpu_env(tmp_path, fake=1)
    a = start("a", env=env)
    _, child_pid = claimed("a")
    a.kill()  # SIGKILL, the wrapper only
    a.wait()
    os.kill(child_pid, 0)  # the child still runs ...
    held = with_gpus(tmp_path, "--count", "1", "--wait-timeout", "1", "--", "true", env=env)
    assert held.returncode == 1  # ... and still holds the device
    assert held.stderr.splitlines()[-1].startswith("l2g with-gpus: error: no 1 free GPU(s) of 0 after waiting 1 s")
    os.kill(child_pid, signal.SIGKILL)
    result = show_claimed(tmp_path, env, "--count", "1", "--wait-timeout", "5")
    assert (result.returncode, result.stdout) == (0, "0\n")


def test_a_waiting_claim_says_what_holds_the_devices_and_gives_up(tmp_path, jobs):
    start, claimed, release = jobs
    env = gpu_env(tmp_path, fake=1)
    a = start("a", env=env)
    _, child = claimed("a")
    # no --wait-timeout: the default (here from the environment, as a workflow job gets it)
    held = with_gpus(tmp_path, "--count", "1", "--", "true", env=dict(env, L2G_GPU_WAIT_TIMEOUT="1"))
    assert held.returncode == 1
    waiting, error = held.stderr.splitlines()
    holder = rf"GPU 0: pid {a.pid} of \S+ since [-0-9]+ [:0-9]+: sh -c .*a\.out.*a\.go.*"
    assert re.fullmatch(rf"l2g with-gpus: waiting for 1 free GPU\(s\) of 0 \(at most 1 s\); held: {holder} "
                        rf"\(lock folder .*\) \.\.\.", waiting), waiting
    assert re.fullmatch(rf"l2g with-gpus: error: no 1 free GPU\(s\) of 0 after waiting 1 s; held: {holder} "
                        rf"\(lock folder .*\)", error), error
    release("a", a)


def test_two_gpu_job_gets_two_distinct_free_devices(tmp_path, jobs):
    start, claimed, release = jobs
    env = gpu_env(tmp_path, fake=3)
    a = start("a", env=env)
    assert claimed("a")[0] == ["0"]
    result = show_claimed(tmp_path, env, "--count", "2")
    assert (result.returncode, result.stdout) == (0, "1,2\n")
    assert "claimed GPU(s) 1,2 of 0,1,2" in result.stderr
    release("a", a)


def test_count_zero_runs_on_the_cpu(tmp_path):
    env = gpu_env(tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    result = with_gpus(tmp_path, "--count", "0", "--", "sh", "-c", 'echo "[${CUDA_VISIBLE_DEVICES-unset}]"', env=env)
    assert (result.returncode, result.stdout) == (0, "[]\n")
    assert "no GPU requested: sh -c" in result.stderr and "runs on the CPU" in result.stderr
    assert not (tmp_path / "locks").exists()


def test_more_devices_than_visible_is_one_line(tmp_path):
    result = with_gpus(tmp_path, "--count", "3", "--", "true")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["l2g with-gpus: error: --count 3: only 2 GPU(s) visible (L2G_FAKE_GPUS=2)"]


def test_slurm_job_without_cuda_visible_devices_is_one_line(tmp_path):
    # a node whose SLURM binds no GPUs: counting the node's devices would take other jobs' GPUs
    env = gpu_env(tmp_path, SLURM_JOB_ID="4242")
    del env[gpus.FAKE_ENV]
    result = with_gpus(tmp_path, "--count", "1", "--", "true", env=env)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("l2g with-gpus: error: SLURM job 4242 has no CUDA_VISIBLE_DEVICES")
    env["CUDA_VISIBLE_DEVICES"] = "0"  # what a SLURM with GPU binding sets
    assert with_gpus(tmp_path, "--count", "1", "--", "true", env=env).returncode == 0


def test_devices_are_numbered_in_pci_order(tmp_path):
    # the order nvidia-smi and SLURM number devices in; CUDA's default puts the fastest first
    for count in ("0", "1"):
        result = with_gpus(tmp_path, "--count", count, "--", "sh", "-c", "echo $CUDA_DEVICE_ORDER")
        assert result.stdout == "PCI_BUS_ID\n"


def test_exit_status_is_the_childs(tmp_path):
    assert with_gpus(tmp_path, "--count", "1", "--", "sh", "-c", "exit 3").returncode == 3
    assert with_gpus(tmp_path, "--count", "1", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_to_the_child(tmp_path, signum):
    name = signal.Signals(signum).name[3:]
    child = f"trap 'echo got-{name} > got; exit 7' {name}; touch started; while :; do sleep 0.05; done"
    # the wrapper starts with the signal's default disposition: a shell that ran pytest in the
    # background has it ignored, and an ignored signal rightly stays ignored (not forwarded)
    proc = subprocess.Popen([L2G, "with-gpus", "--count", "1", "--", "sh", "-c", child], cwd=tmp_path,
                            env=gpu_env(tmp_path), stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    try:
        wait_for((tmp_path / "started").exists, what="the child to start")
        proc.send_signal(signum)  # to the wrapper only; it passes it on
        assert proc.wait(timeout=15) == 7
        assert (tmp_path / "got").read_text() == f"got-{name}\n"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ddp_command_line(tmp_path):
    expected_tail = ["--standalone", "--nproc_per_node", "2", "-m", "l2g_core.cli", "train-l2g", "--epochs", "3"]
    assert ddp_command(["l2g", "train-l2g", "--epochs", "3"], 2) == [str(BIN / "torchrun"), *expected_tail]
    assert ddp_command(["/elsewhere/bin/l2g", "train-l2g", "--epochs", "3"], 2)[1:] == expected_tail
    python = str(tmp_path / "python")  # a folder without torchrun
    assert ddp_command(["l2g", "train-l2g", "--epochs", "3"], 2, python=python) == \
        [python, "-m", "torch.distributed.run", *expected_tail]
    with pytest.raises(L2GError, match="--ddp: COMMAND must be an l2g stage"):
        ddp_command(["python", "train.py"], 2)


def test_ddp_launches_one_process_per_claimed_device(tmp_path):
    result = with_gpus(tmp_path, "--count", "2", "--ddp", "--", "l2g", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["l2g 0.1.0", "l2g 0.1.0"]  # torchrun ran two ranks
    assert "claimed GPU(s) 0,1 of 0,1; 2 DDP processes under torchrun" in result.stderr
    bad = with_gpus(tmp_path, "--count", "2", "--ddp", "--", sys.executable, "-V")
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1


def alive(pid):
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_ddp_ranks_die_with_torchrun_and_hold_the_devices_until_then(tmp_path):
    # each rank is `l2g with-gpus --count 0 -- sh ...` under torchrun: an l2g process like a
    # stage's rank; its sh child writes the rank's pid and waits
    rank = 'echo $PPID > rank-$LOCAL_RANK.pid; while [ ! -e go ]; do sleep 0.05; done'
    env = gpu_env(tmp_path)
    wrapper = subprocess.Popen([L2G, "with-gpus", "--count", "2", "--ddp", "--", "l2g", "with-gpus", "--count", "0",
                                "--", "sh", "-c", rank], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        pid_files = [tmp_path / f"rank-{r}.pid" for r in (0, 1)]
        wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), timeout=60, what="the ranks")
        ranks = [int(p.read_text()) for p in pid_files]
        torchrun = int(Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()[0])
        assert all(alive(pid) for pid in ranks)
        held = with_gpus(tmp_path, "--count", "1", "--wait-timeout", "0.5", "--", "true", env=env)
        assert held.returncode == 1 and "held: GPU 0: pid" in held.stderr

        os.kill(wrapper.pid, signal.SIGKILL)  # the wrapper and torchrun, as a scheduler's kill -9 would
        os.kill(torchrun, signal.SIGKILL)
        wrapper.wait()
        wait_for(lambda: not any(alive(pid) for pid in ranks), timeout=15, what="the ranks to die with torchrun")
        # the next claim gets both devices, and no rank ran when it got them
        check = " ".join(f"$(test -d /proc/{pid} && grep -q '^State:.*Z' /proc/{pid}/status && echo gone "
                         f"|| (test -d /proc/{pid} && echo alive || echo gone))" for pid in ranks)
        result = with_gpus(tmp_path, "--count", "2", "--wait-timeout", "10", "--", "sh", "-c",
                           f'echo "$CUDA_VISIBLE_DEVICES {check}"', env=env)
        assert (result.returncode, result.stdout) == (0, "0,1 gone gone\n"), result.stderr
    finally:
        (tmp_path / "go").touch()  # ends the ranks' sh children, orphans in sessions of their own
        try:
            os.killpg(wrapper.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wrapper.wait()


def test_a_rank_of_an_ended_job_keeps_its_devices_until_it_ends(tmp_path, jobs):
    # a rank holds the claim beside the job (gpus.join_claim): killed wrapper and child free the
    # device only once the rank is gone too
    start, claimed, _ = jobs
    env = gpu_env(tmp_path, fake=1)
    a = start("a", env=env)
    claimed("a")
    rank_code = ("import sys, time; from l2g_core import gpus; gpus.join_claim(); print('holding', flush=True); "
                 "sys.stdin.read()")
    rank = subprocess.Popen([sys.executable, "-c", rank_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=dict(env, LOCAL_RANK="0", L2G_GPU_CLAIM=str(tmp_path / "locks"),
                                                CUDA_VISIBLE_DEVICES="0"))
    try:
        assert rank.stdout.readline() == "holding\n"
        os.killpg(a.pid, signal.SIGKILL)  # the job's wrapper and child; the rank (not its child) runs on
        a.wait()
        held = with_gpus(tmp_path, "--count", "1", "--wait-timeout", "0.5", "--", "true", env=env)
        assert held.returncode == 1
        assert held.stderr.splitlines()[-1].endswith(
            f"held: GPU 0: DDP ranks of an ended job still run (lock folder {tmp_path / 'locks'})")
    finally:
        rank.kill()
        rank.wait()
    result = show_claimed(tmp_path, env, "--count", "1", "--wait-timeout", "5")
    assert (result.returncode, result.stdout) == (0, "0\n")


def test_a_rank_started_after_its_job_ended_stops(tmp_path):
    # torchrun killed before its rank armed the death signal: the claim is free, the rank stops
    env = dict(gpu_env(tmp_path), LOCAL_RANK="0", L2G_GPU_CLAIM=str(tmp_path / "locks"), CUDA_VISIBLE_DEVICES="0")
    with gpus.try_claim(["0"], 1, tmp_path / "locks"):
        held = subprocess.run([L2G, "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert (held.returncode, held.stdout) == (0, "l2g 0.1.0\n")  # while its job holds the claim, it runs
    late = subprocess.run([L2G, "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert late.returncode == 1 and late.stdout == ""
    assert late.stderr == "l2g: the job of this DDP rank has ended (GPU 0 is no longer claimed); stopping\n"


def test_ddp_ranks_share_the_jobs_threads(tmp_path):
    env = gpu_env(tmp_path, OMP_NUM_THREADS="8")
    result = with_gpus(tmp_path, "--count", "2", "--ddp", "--", "l2g", "with-gpus", "--count", "0", "--",
                       "sh", "-c", "echo $OMP_NUM_THREADS", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["4", "4"]  # 2 ranks x 4 threads on the job's 8
    one = with_gpus(tmp_path, "--count", "1", "--ddp", "--", "l2g", "with-gpus", "--count", "0", "--",
                    "sh", "-c", "echo $OMP_NUM_THREADS", env=env)
    assert one.stdout == "8\n"


@pytest.mark.parametrize("gpu_slots", [2, 4])  # 4: Snakemake over-commits and the claims make jobs wait
def test_snakemake_jobs_never_share_a_device(tmp_path, gpu_slots):
    rules = "rule all:\n    input: expand('out/{i}.txt', i=range(4))\n"
    for index in range(4):
        rules += (f"\nrule job{index}:\n    output: 'out/{index}.txt'\n    resources: gpu=1\n"
                  "    shell: \"l2g with-gpus --count {resources.gpu} -- sh -c "
                  "'echo $CUDA_VISIBLE_DEVICES $(date +%s.%N) > {output}; sleep 1; date +%s.%N >> {output}'\"\n")
    (tmp_path / "Snakefile").write_text(rules)
    result = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(tmp_path / "Snakefile"),
                             "--directory", str(tmp_path), "--cores", "4", "--resources", f"gpu={gpu_slots}"],
                            check=False, cwd=tmp_path, env=gpu_env(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = []
    for index in range(4):
        first, second = (tmp_path / "out" / f"{index}.txt").read_text().split("\n")[:2]
        device, begin = first.split()
        runs.append((device, float(begin), float(second)))
    assert {device for device, _, _ in runs} <= {"0", "1"}
    overlapping = [(x, y) for i, x in enumerate(runs) for y in runs[i + 1:] if x[1] < y[2] and y[1] < x[2]]
    assert overlapping, runs  # two jobs did run side by side ...
    assert all(x[0] != y[0] for x, y in overlapping), runs  # ... each on its own device
    if gpu_slots > 2:
        assert "waiting for 1 free GPU(s)" in result.stdout + result.stderr


def job_spans(stdout):
    """{(rule, wildcards): (start, end)}: the positions, in Snakemake's event order, at which each
    job started and finished."""
    started, finished, names = {}, {}, {}
    for position, block in enumerate(re.split(r"\n(?=\[\w{3} \w{3} )", stdout)):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        jobid = re.search(r"^\s+jobid: (\d+)", block, re.M)
        if rule and jobid:
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            names[jobid.group(1)] = (rule.group(1), wildcards.group(1) if wildcards else "")
            started[jobid.group(1)] = position
        for done in re.findall(r"Finished jobid: (\d+)", block):
            finished[done] = position
    return {names[j]: (started[j], finished[j]) for j in started if j in finished}


def test_shipped_voc_jobs_keep_two_gpus_busy_with_8_cores(tmp_path):
    # `--cores 8 --resources gpu=2` with the voc section's job settings: L2G and the control run
    # side by side on distinct devices
    config = tiny_config()
    config["datasets"]["demo"]["jobs"] = config["datasets"]["voc"]["jobs"]
    env = {gpus.FAKE_ENV: "2", gpus.LOCK_DIR_ENV: str(tmp_path / "locks")}
    result = run_snakemake(tmp_path, "--cores", "8", "--resources", "gpu=2", "--",
                           "results/demo/l2g/model.pt", "results/demo/control/model.pt", config=config, env=env)
    output = result.stdout + result.stderr
    spans = {rule: span for (rule, _), span in job_spans(output).items()}
    (l2g_start, l2g_end), (control_start, control_end) = spans["train_l2g"], spans["train_control"]
    assert l2g_start < control_end and control_start < l2g_end, spans  # side by side
    logs = tmp_path / "results/demo/logs"
    claimed = {name: re.search(r"claimed GPU\(s\) (\d)", (logs / f"{name}.log").read_text()).group(1)
               for name in ("train_l2g", "train_control")}
    assert sorted(claimed.values()) == ["0", "1"], claimed
    # a GPU job's loader gets its threads less one (the voc default of 4 threads)
    assert re.search(r"l2g train-l2g .* --workers 3 ", output)


def test_a_ddp_jobs_loader_workers_share_its_threads(tmp_path):
    # a 2-GPU training job of 8 threads runs 2 processes of 4 threads (l2g with-gpus splits
    # OMP_NUM_THREADS): each loader gets 4 - 1 workers, not 8 - 1; CAM export is one process
    config = tiny_config()
    config["datasets"]["demo"]["jobs"].update(
        threads={"default": 4, "train_l2g": 8, "export_cams": 8},
        gpu={"default": 0, "train_cls": 1, "train_l2g": 2, "export_cams": 2})
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "8", "--resources", "gpu=2", "--",
                           "results/demo/cams/manifest.json", config=config)
    lines = result.stdout.splitlines()

    def command(stage):
        return next(line for line in lines if f"l2g {stage} " in line)
    assert "OMP_NUM_THREADS=8 l2g with-gpus --count 2 --ddp -- l2g train-l2g" in command("train-l2g")
    assert " --workers 3 " in command("train-l2g")
    assert " --workers 3 " in command("train-cls")  # 1 GPU, 4 threads
    assert " --workers 7 " in command("export-cams")
