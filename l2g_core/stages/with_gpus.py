"""`l2g with-gpus`: run a command on GPUs of its own.

    l2g with-gpus --count N [--ddp] [--wait-timeout S] -- COMMAND [ARGS...]

Snakemake's `gpu` resource only counts devices; this wrapper, in a GPU rule's shell line, picks
them. It claims N distinct devices among those visible (l2g_core.gpus: CUDA_VISIBLE_DEVICES as a
scheduler such as SLURM set it, else L2G_FAKE_GPUS, else nvidia-smi), waiting while other jobs
hold them (at most --wait-timeout seconds, saying what holds them), and runs COMMAND as its child
with CUDA_VISIBLE_DEVICES set to exactly those, in the same working directory and otherwise the
same environment. The claim (flock-ed lock files, passed to the child as open descriptors) lasts
while the wrapper or the child lives and ends with the last of them, however it ends. SIGTERM and
SIGINT are forwarded to the child; the wrapper exits with the child's status (128 + signal for a
child killed by a signal).

N = 0 runs COMMAND with CUDA_VISIBLE_DEVICES="" (on the CPU). With --ddp and N > 1, COMMAND
`l2g STAGE ...` becomes `torchrun --standalone --nproc_per_node N -m l2g_core.cli STAGE ...`: one
process per device, each on cuda:LOCAL_RANK (l2g_core.runtime). The job's CPU threads
(OMP_NUM_THREADS, its Snakemake `threads`) are split over the N processes, and each rank holds
the claim too and dies with torchrun (l2g_core.gpus.join_claim), so the devices stay claimed until
its last process has ended.
"""

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from l2g_core import gpus
from l2g_core.errors import L2GError


def configure(parser):
    parser.add_argument("--count", type=int, required=True, metavar="N",
                        help="number of distinct GPUs to claim (0: run on the CPU)")
    parser.add_argument("--ddp", action="store_true",
                        help="with N > 1, run COMMAND (l2g STAGE ...) as N DDP processes under torchrun")
    parser.add_argument("--wait-timeout", type=float, default=None, metavar="S",
                        help=f"give up after S seconds of waiting for free GPUs (default {gpus.WAIT_ENV}, else "
                             f"{gpus.DEFAULT_WAIT_SECONDS:g} s; inf: wait forever)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]",
                        help="the command to run, after --")
    parser.epilog = (f"Devices: CUDA_VISIBLE_DEVICES if set, else {gpus.FAKE_ENV}=N (pretend N devices), else "
                     f"nvidia-smi -L. Claims: lock files in {gpus.LOCK_DIR_ENV}, else {gpus.DEFAULT_LOCK_DIR}, "
                     "shared by every user (plus -SLURM_JOB_ID under SLURM).")


def say(message):
    print(f"l2g with-gpus: {message}", file=sys.stderr, flush=True)


def ddp_command(command, nproc, python=None):
    """`l2g ARGS...` as `torchrun --standalone --nproc_per_node NPROC -m l2g_core.cli ARGS...`.

    torchrun comes from the bin folder of this Python (the same environment as this l2g), or
    `python -m torch.distributed.run` where that folder has no torchrun script."""
    if not command or Path(command[0]).name != "l2g":
        raise L2GError(f"--ddp: COMMAND must be an l2g stage (l2g STAGE ...), not {shlex.join(command)!r}")
    python = python or sys.executable
    torchrun = Path(python).parent / "torchrun"  # not resolved: a venv's python is a symlink
    launcher = [str(torchrun)] if torchrun.exists() else [python, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc_per_node", str(nproc), "-m", "l2g_core.cli", *command[1:]]


def split_threads(env, processes):
    """OMP_NUM_THREADS (the job's threads) shared out over its DDP processes: each rank gets its
    part, so that a 2-GPU job of 8 threads runs 2 x 4 threads, not 2 x 8 on 8 cores. Unset, it is
    left to torchrun (1 per process)."""
    value = env.get("OMP_NUM_THREADS", "")
    if value.strip().isdigit():
        env["OMP_NUM_THREADS"] = str(max(1, int(value) // processes))


def terminal_delivers_sigint():
    """True when a Ctrl-C on our terminal reaches the child by itself.

    The child stays in our process group (so a scheduler that kills the group kills it too);
    when that group is the terminal's foreground group the terminal sends SIGINT to both of us,
    and forwarding it as well would interrupt the child twice."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def run_child(command, env, fds=()):
    """Run COMMAND to its end with SIGTERM/SIGINT forwarded; its exit status (128 + signal)."""
    child = None
    pending = []

    def forward(signum, frame):
        if signum == signal.SIGINT and terminal_delivers_sigint():
            return
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) != signal.SIG_IGN:  # an ignored signal stays ignored
            try:
                previous[signum] = signal.signal(signum, forward)
            except ValueError:  # not the main thread: no forwarding
                pass
    try:
        try:
            child = subprocess.Popen(command, env=env, pass_fds=tuple(fds))
        except OSError as error:
            raise L2GError(f"cannot run {command[0]}: {error.strerror}") from None
        for signum in pending:
            child.send_signal(signum)
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def run(args):
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise L2GError("no COMMAND given: l2g with-gpus --count N -- COMMAND [ARGS...]")
    if args.count < 0:
        raise L2GError(f"--count {args.count}: expected 0 or more GPUs")
    if args.wait_timeout is not None and not args.wait_timeout >= 0:
        raise L2GError(f"--wait-timeout {args.wait_timeout:g}: expected 0 or more seconds (or inf)")
    wait_timeout = gpus.wait_timeout() if args.wait_timeout is None else args.wait_timeout
    holder = shlex.join(command)  # written into the lock files: what a waiting job says holds them
    # CUDA numbers devices fastest first by default; nvidia-smi, SLURM and the claims use PCI order
    env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    if args.ddp:
        distributed = ddp_command(command, args.count)  # checks COMMAND even when N <= 1
        if args.count > 1:
            command = distributed
            split_threads(env, args.count)
    if args.count == 0:
        say(f"no GPU requested: {shlex.join(command)} runs on the CPU")
        env["CUDA_VISIBLE_DEVICES"] = ""
        code = run_child(command, env)
    else:
        devices, source = gpus.visible_devices()
        if args.count > len(devices):
            raise L2GError(f"--count {args.count}: only {len(devices)} GPU(s) visible ({source})")
        directory = gpus.lock_dir()
        with gpus.claim(devices, args.count, directory, wait_timeout, on_wait=say, holder=holder) as claimed:
            say(f"claimed GPU(s) {','.join(claimed.devices)} of {','.join(devices)}"
                + (f"; {args.count} DDP processes under torchrun" if args.ddp and args.count > 1 else ""))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(claimed.devices)
            env[gpus.CLAIM_ENV] = str(directory)  # DDP ranks hold the claim too (gpus.join_claim)
            code = run_child(command, env, claimed.fds)
    if code:
        raise SystemExit(code)
