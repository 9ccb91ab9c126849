"""Which GPUs a job may use: the devices visible to it, and exclusive claims on some of them.

Snakemake's `--resources gpu=N` only counts GPUs; it never says which device a job gets, so two
jobs started side by side would both land on device 0. Each GPU job therefore claims the devices
it uses (`l2g with-gpus`, l2g_core/stages/with_gpus.py): one lock file per device in a lock
folder, held with flock(2) on an open file descriptor. The kernel drops such a lock when the last
descriptor of its open file is closed, which happens when every process holding it has ended,
however it ended (SIGKILL and OOM kills included), so a claim can never outlive its job and there
is nothing stale to clean up. Lock files are never deleted: deleting one while another process
waits on it would let two processes lock two different files of the same name.

The folder is shared by every user of the machine (sticky and world-writable, as /tmp: anyone may
add a lock file, nobody may delete another's; the files are readable and writable by all), since
two users' jobs on one box must not both take GPU 0; under SLURM it is one folder per job. Lock
files are opened read-write: where flock is emulated with fcntl locks (NFS), an exclusive lock
needs a file open for writing. The holder writes who it is into the file, so a job that has to
wait says what holds the devices.

torchrun starts DDP ranks with the claim's descriptors closed, so a rank holds the claim in a
second file per device, `gpu-N.busy`, with a shared lock (join_claim, called by `l2g` itself in a
rank), and dies with torchrun (PR_SET_PDEATHSIG). A device is free when its claim file and its
busy file can both be locked: a job whose wrapper and torchrun were killed frees its devices only
once its last rank has gone too.

Kept free of torch so that `l2g with-gpus` starts in milliseconds.
"""

import ctypes
import datetime
import fcntl
import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from l2g_core.errors import L2GError

FAKE_ENV = "L2G_FAKE_GPUS"  # testing / CPU: pretend devices 0..N-1 exist
LOCK_DIR_ENV = "L2G_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/l2g-gpu-locks"  # one for every user of the machine
CLAIM_ENV = "L2G_GPU_CLAIM"  # set by `l2g with-gpus` for its command: the lock folder of its devices
WAIT_ENV = "L2G_GPU_WAIT_TIMEOUT"  # seconds a claim waits for free devices (workflow jobs)
DEFAULT_WAIT_SECONDS = 7200.0
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
    """The folder of the claim files: L2G_GPU_LOCK_DIR, else /tmp/l2g-gpu-locks, one folder for
    every user of the machine (two users' jobs must not both take device 0).

    Under SLURM (SLURM_JOB_ID set) `-JOBID` is appended: SLURM already gives each job its own
    devices, often renumbered from 0 inside every job, so "device 0" of two jobs on one node are
    different GPUs and claims must be shared only within one allocation, not across the node."""
    environ = os.environ if environ is None else environ
    base = environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR
    job = environ.get("SLURM_JOB_ID")
    return Path(f"{base}-{job}" if job else base)


def wait_timeout(environ=None):
    """Seconds a claim waits by default: L2G_GPU_WAIT_TIMEOUT, else two hours ("inf": forever)."""
    environ = os.environ if environ is None else environ
    value = environ.get(WAIT_ENV)
    if value is None:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise L2GError(f"{WAIT_ENV}={value!r}: expected seconds (0 or more, or inf)")
    return seconds


def lock_path(directory, device):
    """The claim file of one device entry (a UUID or MIG name made safe for a file name)."""
    return Path(directory) / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', device)}.lock"


def busy_path(directory, device):
    """The file DDP ranks hold the device's claim in (shared locks), beside its claim file."""
    return lock_path(directory, device).with_suffix(".busy")


def prepare_lock_dir(directory):
    """Create the lock folder, sticky and writable by everyone (as /tmp) when it is ours."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if directory.stat().st_uid == os.getuid() and directory.stat().st_mode & 0o7777 != 0o1777:
            os.chmod(directory, 0o1777)  # mkdir's mode is cut by the umask: set it after
    except OSError as error:
        raise L2GError(f"GPU lock folder {directory}: {error.strerror} (set {LOCK_DIR_ENV} to a folder "
                       "every user of the GPUs can write)") from None
    return directory


def open_lock(path):
    """A read-write descriptor of a lock file, created readable and writable by every user."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise L2GError(f"GPU lock file {path}: {error.strerror} (it must be readable and writable by every "
                       f"user of the GPUs: chmod 666 it, or set {LOCK_DIR_ENV})") from None
    try:
        if os.fstat(fd).st_uid == os.getuid() and os.fstat(fd).st_mode & 0o777 != 0o666:
            os.fchmod(fd, 0o666)  # the umask cut the mode at creation
    except OSError:
        pass
    return fd


def lock(fd, path, kind=fcntl.LOCK_EX):
    """True when the lock was taken, False when another process holds a conflicting one."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        raise L2GError(f"GPU lock file {path}: cannot lock: {error.strerror}") from None


def ranks_gone(directory, device):
    """True when no rank of an ended job holds the device any more (its busy file locks)."""
    path = busy_path(directory, device)
    fd = open_lock(path)
    try:
        free = lock(fd, path)
        if free:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return free
    finally:
        os.close(fd)


def holder_text(holder=None):
    """Who holds a claim, as written into its lock file: process, user, time, command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    since = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {os.getpid()} of {user} since {since}" + (f": {holder}" if holder else "")


def holders(devices, directory):
    """'GPU d: who' for each of `devices` that is held, as its holder wrote it (or the ranks that
    still run), for the messages of a waiting claim."""
    said = []
    for device in devices:
        path = lock_path(directory, device)
        fd = open_lock(path)
        try:
            if lock(fd, path):
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not ranks_gone(directory, device):
                    said.append(f"GPU {device}: DDP ranks of an ended job still run")
                continue
            text = os.pread(fd, 1000, 0).decode(errors="replace").strip()
            said.append(f"GPU {device}: {text or 'a job that does not say who it is'}")
        finally:
            os.close(fd)
    return "; ".join(said)


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


def try_claim(devices, count, directory, holder=None):
    """Claim `count` free devices of `devices` (lowest first) without waiting; None if too few.

    All or nothing: a job never sits on part of what it needs, so two jobs that each need two
    devices cannot deadlock holding one each. A device is free when its claim file can be locked
    and no rank of an ended job still holds it (ranks_gone); the claim file then says who holds it."""
    claim = Claim()
    if count <= 0:
        return claim
    directory = prepare_lock_dir(directory)
    text = holder_text(holder).encode()
    try:
        for device in devices:
            if len(claim.devices) == count:
                break
            path = lock_path(directory, device)
            fd = open_lock(path)
            if not lock(fd, path) or not ranks_gone(directory, device):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
            claim.devices.append(device)
            claim.fds.append(fd)
    except BaseException:
        claim.release()
        raise
    if len(claim.devices) < count:
        claim.release()
        return None
    return claim


def claim(devices, count, directory, wait_timeout=DEFAULT_WAIT_SECONDS, poll=POLL_SECONDS, on_wait=None,
          holder=None):
    """Claim `count` distinct devices of `devices`, waiting until enough are free.

    Waits at most `wait_timeout` seconds (None or inf: forever), then fails with one line naming
    what holds the devices. Calls on_wait(message) once, when it first has to wait, so the job log
    says why it is idle and what it waits for. `holder` (e.g. the command) goes into the lock files."""
    if count > len(devices):
        raise L2GError(f"{count} GPU(s) requested but only {len(devices)} visible")
    forever = wait_timeout is None or wait_timeout == float("inf")
    deadline = None if forever else time.monotonic() + wait_timeout
    waiting = False
    while True:
        claimed = try_claim(devices, count, directory, holder)
        if claimed is not None:
            return claimed
        if deadline is not None and time.monotonic() >= deadline:
            raise L2GError(f"no {count} free GPU(s) of {','.join(devices)} after waiting {wait_timeout:g} s; "
                           f"held: {holders(devices, directory) or 'none now'} (lock folder {directory})")
        if not waiting and on_wait is not None:
            on_wait(f"waiting for {count} free GPU(s) of {','.join(devices)}"
                    + ("" if forever else f" (at most {wait_timeout:g} s)")
                    + f"; held: {holders(devices, directory) or 'none now'} (lock folder {directory}) ...")
        waiting = True
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))


# --- DDP ranks: hold the claim, die with torchrun -------------------------------------------------

_rank_fds = []  # the busy-file descriptors of this rank: open for the process's whole life


def die_with_parent():
    """Ask the kernel to SIGKILL this process when its parent (torchrun) ends. Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        return libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def join_claim(environ=None):
    """In a DDP rank (LOCAL_RANK set): die with torchrun, and hold the devices of the `l2g
    with-gpus` job that started it (L2G_GPU_CLAIM) until this process ends.

    torchrun starts its ranks with the wrapper's claim descriptors closed, and SIGKILL gives
    torchrun no chance to stop them: without this, ranks of a killed job run on, on devices a new
    claim hands out again. A rank whose job has already ended (its claim is free: torchrun died
    before the death signal was armed) stops at once."""
    environ = os.environ if environ is None else environ
    if "LOCAL_RANK" not in environ:
        return False
    die_with_parent()
    if CLAIM_ENV not in environ:
        return True
    directory = Path(environ[CLAIM_ENV])
    devices = parse_visible(environ.get("CUDA_VISIBLE_DEVICES", ""))
    if devices and not directory.is_dir():
        _stop_rank(f"its lock folder {directory} is gone")
    for device in devices:
        path = busy_path(directory, device)
        fd = open_lock(path)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a claimer looks (ranks_gone), a moment
        _rank_fds.append(fd)
    for device in devices:
        path = lock_path(directory, device)
        fd = open_lock(path)
        try:
            ended = lock(fd, path)
        finally:
            os.close(fd)  # closing drops a lock just taken: the claim stays free for others
        if ended:
            _stop_rank(f"GPU {device} is no longer claimed")
    return True


def _stop_rank(why):
    print(f"l2g: the job of this DDP rank has ended ({why}); stopping", file=sys.stderr, flush=True)
    os._exit(1)
