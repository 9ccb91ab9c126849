"""Which GPUs a job may use: the devices visible to it, and exclusive claims on some of them.

Snakemake's `--resources gpu=N` only counts GPUs; it never says which device a job gets, so two
jobs started side by side would both land on device 0. Each GPU job therefore claims the devices
it uses (`l2g with-gpus`, l2g_core/stages/with_gpus.py): one lock file per device in a lock
folder, held with flock(2) on an open file descriptor. The kernel drops such a lock when the last
descriptor of its open file is closed, which happens when every process holding it has ended,
however it ended (SIGKILL and OOM kills included), so a claim can never outlive its job and there
is nothing stale to clean up. Lock files are never deleted: deleting one while another process
waits on it would let two processes lock two different files of the same name.

Kept free of torch so that `l2g with-gpus` starts in milliseconds.
"""

import fcntl
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from l2g_core.errors import L2GError

FAKE_ENV = "L2G_FAKE_GPUS"  # testing / CPU: pretend devices 0..N-1 exist
LOCK_DIR_ENV = "L2G_GPU_LOCK_DIR"
POLL_SECONDS = 0.5


def parse_visible(value):
    """The entries of a CUDA_VISIBLE_DEVICES value: ids or UUIDs, in order; "" means none.

    CUDA stops at the first invalid entry, so a negative id (the common "-1" = "hide all GPUs")
    ends the list here too."""
    devices = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        if re.fullmatch(r"-\d+", entry):
            break
        devices.append(entry)
    return devices


def nvidia_smi_devices(path=None):
    """Devices 0..N-1 counted by `nvidia-smi -L` (one "GPU i: ..." line each), or [] without it.

    Asks the driver tool instead of importing torch, which would take seconds."""
    executable = shutil.which("nvidia-smi", path=path)
    if executable is None:
        return []
    try:
        listing = subprocess.run([executable, "-L"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    count = sum(1 for line in listing.stdout.splitlines() if re.match(r"GPU \d+:", line))
    return [str(index) for index in range(count)]


def visible_devices(environ=None):
    """(devices, source): the device entries this process may use and where they came from.

    CUDA_VISIBLE_DEVICES wins when set (a scheduler such as SLURM sets it to the job's devices,
    and an empty value means none); else L2G_FAKE_GPUS=N pretends devices 0..N-1 (for tests and
    CPU-only machines); else nvidia-smi counts the physical devices; else there are none.

    Inside a SLURM job (SLURM_JOB_ID set) with no CUDA_VISIBLE_DEVICES, the node's SLURM does not
    confine jobs to their GPUs (no gres/GPU binding): counting the node's devices would let this
    job take GPUs that SLURM gave to other jobs, so that is an error."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"]
        return parse_visible(value), f"CUDA_VISIBLE_DEVICES={value!r}"
    if "SLURM_JOB_ID" in environ and FAKE_ENV not in environ:
        raise L2GError(f"SLURM job {environ['SLURM_JOB_ID']} has no CUDA_VISIBLE_DEVICES: this node's SLURM "
                       "does not bind GPUs to jobs (ask for them with --gpus/--gres; GresTypes=gpu in slurm.conf)")
    if FAKE_ENV in environ:
        value = environ[FAKE_ENV]
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise L2GError(f"{FAKE_ENV}={value!r}: expected a number of devices (0, 1, 2, ...)")
        return [str(index) for index in range(int(value))], f"{FAKE_ENV}={int(value)}"
    devices = nvidia_smi_devices(environ.get("PATH"))
    if devices:
        return devices, "nvidia-smi -L"
    source = "nvidia-smi -L lists none" if shutil.which("nvidia-smi", path=environ.get("PATH")) else \
        f"no CUDA_VISIBLE_DEVICES, no {FAKE_ENV}, no nvidia-smi"
    return [], source


def lock_dir(environ=None):
    """The folder of the claim files: L2G_GPU_LOCK_DIR, else /tmp/l2g-gpu-locks-UID.

    Under SLURM (SLURM_JOB_ID set) `-JOBID` is appended: SLURM already gives each job its own
    devices, often renumbered from 0 inside every job, so "device 0" of two jobs on one node are
    different GPUs and claims must be shared only within one allocation, not across the node."""
    environ = os.environ if environ is None else environ
    base = environ.get(LOCK_DIR_ENV) or f"/tmp/l2g-gpu-locks-{os.getuid()}"
    job = environ.get("SLURM_JOB_ID")
    return Path(f"{base}-{job}" if job else base)


def lock_path(directory, device):
    """The claim file of one device entry (a UUID or MIG name made safe for a file name)."""
    return Path(directory) / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


@dataclass
class Claim:
    """Devices held by this process through open, flock-ed descriptors (`fds`).

    Pass `fds` to a child (subprocess pass_fds) and the claim lasts while either process lives."""
    devices: list = field(default_factory=list)
    fds: list = field(default_factory=list)

    def release(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def try_claim(devices, count, directory):
    """Claim `count` free devices of `devices` (lowest first) without waiting; None if too few.

    All or nothing: a job never sits on part of what it needs, so two jobs that each need two
    devices cannot deadlock holding one each."""
    claim = Claim()
    if count <= 0:
        return claim
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise L2GError(f"GPU lock folder {directory}: {error.strerror}") from None
    try:
        for device in devices:
            if len(claim.devices) == count:
                break
            path = lock_path(directory, device)
            try:
                # Read-only is enough for flock, and lets a lock folder shared between users work.
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise L2GError(f"GPU lock file {path}: {error.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except OSError as error:
                os.close(fd)
                raise L2GError(f"GPU lock file {path}: cannot lock: {error.strerror}") from None
            claim.devices.append(device)
            claim.fds.append(fd)
    except BaseException:
        claim.release()
        raise
    if len(claim.devices) < count:
        claim.release()
        return None
    return claim


def claim(devices, count, directory, wait_timeout=None, poll=POLL_SECONDS, on_wait=None):
    """Claim `count` distinct devices of `devices`, waiting until enough are free.

    Waits forever unless `wait_timeout` (seconds) is given, then fails with one line. Calls
    on_wait(message) once, when it first has to wait, so the job log says why it is idle."""
    if count > len(devices):
        raise L2GError(f"{count} GPU(s) requested but only {len(devices)} visible")
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    waiting = False
    while True:
        claimed = try_claim(devices, count, directory)
        if claimed is not None:
            return claimed
        if deadline is not None and time.monotonic() >= deadline:
            raise L2GError(f"no {count} free GPU(s) of {','.join(devices)} after waiting {wait_timeout:g} s; "
                           f"the others are claimed by running jobs (lock folder {directory})")
        if not waiting and on_wait is not None:
            on_wait(f"waiting for {count} free GPU(s) of {','.join(devices)}; the others are claimed by "
                    f"running jobs (lock folder {directory}) ...")
        waiting = True
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
