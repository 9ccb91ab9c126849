"""The two training stages and the shared loop: schedules, resume after a kill, DDP, errors."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from l2g_core.cli import main
from l2g_core.errors import L2GError
from l2g_core.model_io import load_classifier
from l2g_core.models import build_backbone
from l2g_core.training import TrainSettings, epoch_order, epoch_seed, lr_factor, split_batch

from conftest import BIN, prepare_tiny_dataset

CLS_OPTIONS = ["--input-size", "64", "--batch-size", "4", "--lr", "0.01", "--schedule", "poly", "--seed", "1"]
L2G_OPTIONS = ["--input-size", "64", "--crop-size", "32", "--num-crops", "4", "--batch-size", "4", "--lr", "0.005",
               "--seed", "1"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return prepare_tiny_dataset(tmp_path_factory.mktemp("train"), train=24, val=4)


@pytest.fixture(scope="module")
def stage1(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "model.pt"
    assert main(["train-cls", "--manifest", str(manifest), "--out", str(out), "--epochs", "1", *CLS_OPTIONS]) == 0
    return out


def _l2g(*args):
    return [str(BIN / "l2g"), *args]


def _same_weights(path_a, path_b, key="state_dict"):
    a = torch.load(path_a, weights_only=True)[key]
    b = torch.load(path_b, weights_only=True)[key]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kill_after_first_checkpoint(command, out_dir, sig):
    """Start `command`, wait for the epoch-1 checkpoint, kill the process part-way into epoch 2."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out_dir / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait()
    assert checkpoint.exists(), process.stdout.read()
    assert not (out_dir / "model.pt").exists()


def test_poly_and_step_schedules():
    poly = TrainSettings(epochs=2, batch_size=1, lr=1.0, schedule="poly", poly_power=0.9)
    assert lr_factor(poly, 0, 0, 100) == 1.0
    assert lr_factor(poly, 1, 50, 100) == pytest.approx(0.5 ** 0.9)
    step = TrainSettings(epochs=10, batch_size=1, lr=1.0, schedule="step", step_epochs=[5, 8], gamma=0.1)
    assert [lr_factor(step, e, 0, 1) for e in (0, 4, 5, 7, 8, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_epoch_order_is_a_function_of_seed_and_epoch_and_shards_evenly():
    assert epoch_order(10, 0, 3) == epoch_order(10, 0, 3) != epoch_order(10, 0, 4)
    shards = [epoch_order(11, 0, 0, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])


def test_stage1_writes_a_classifier_and_a_loss_log(stage1, manifest):
    model, state = load_classifier(stage1, class_names=["owl", "fox", "frog", "bee", "fish", "snail"])
    assert state["stage"] == "cls" and state["build_args"]["backbone"] == "small"
    assert state["versions"]["torch"].startswith("2.13")
    out = model(torch.zeros(1, 3, 64, 64))
    assert out["cams"].shape == (1, 7, 8, 8)
    log = (stage1.parent / "train_log.csv").read_text().splitlines()
    assert log[0] == "epoch,update,lr,loss" and len(log) >= 2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_stage1_killed_and_resumed_equals_uninterrupted(manifest, tmp_path, sig):
    straight = tmp_path / "straight" / "model.pt"
    command = ["train-cls", "--manifest", str(manifest), "--epochs", "2", *CLS_OPTIONS]
    assert subprocess.run(_l2g(*command, "--out", str(straight)), capture_output=True).returncode == 0
    resumed = tmp_path / "resumed" / "model.pt"
    _kill_after_first_checkpoint(_l2g(*command, "--out", str(resumed)), resumed.parent, sig)
    result = subprocess.run(_l2g(*command, "--out", str(resumed)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout and "after epoch 1" in result.stdout
    assert _same_weights(straight, resumed)
    assert (resumed.parent / "train_log.csv").read_text() == (straight.parent / "train_log.csv").read_text()


def test_stage2_killed_and_resumed_equals_uninterrupted(manifest, stage1, tmp_path):
    command = ["train-l2g", "--manifest", str(manifest), "--init-from", str(stage1), "--epochs", "2", *L2G_OPTIONS]
    straight = tmp_path / "straight" / "model.pt"
    assert subprocess.run(_l2g(*command, "--out", str(straight)), capture_output=True).returncode == 0
    resumed = tmp_path / "resumed" / "model.pt"
    _kill_after_first_checkpoint(_l2g(*command, "--out", str(resumed)), resumed.parent, signal.SIGKILL)
    result = subprocess.run(_l2g(*command, "--out", str(resumed)), capture_output=True, text=True)
    assert result.returncode == 0 and "after epoch 1" in result.stdout
    assert _same_weights(straight, resumed) and _same_weights(straight, resumed, "local_state_dict")
    header = (straight.parent / "train_log.csv").read_text().splitlines()[0]
    assert header == "epoch,update,lr,loss,kd,cls_local,cls_global"


def test_stage2_without_saliency_and_with_the_weak_point_options(manifest, stage1, tmp_path):
    out = tmp_path / "model.pt"
    code = main(["train-l2g", "--manifest", str(manifest), "--init-from", str(stage1), "--out", str(out),
                 "--epochs", "1", "--no-use-saliency", "--background", "threshold", "--ignore-empty",
                 "--global-cls-weight", "1.0", *L2G_OPTIONS])
    assert code == 0
    state = torch.load(out, weights_only=True)
    assert state["stage"] == "l2g" and state["settings"]["use_saliency"] is False
    assert not _same_weights(stage1, out)


def test_changed_settings_do_not_resume_a_stale_checkpoint(manifest, tmp_path):
    out = tmp_path / "model.pt"
    base = ["train-cls", "--manifest", str(manifest), "--out", str(out), "--epochs", "1", *CLS_OPTIONS]
    assert main(base) == 0
    result = subprocess.run(_l2g(*base, "--lr", "0.02"), capture_output=True, text=True)
    assert result.returncode == 0 and "made with other settings or inputs; starting from epoch 0" in result.stdout


@pytest.mark.parametrize("extra, message", [
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--num-crops", "0"], "--num-crops must be at least 1"),
    (["--crop-size", "96"], "--crop-size 96 must be positive and at most --input-size 64"),
])
def test_bad_stage2_values_are_one_line_errors(manifest, stage1, tmp_path, capsys, extra, message):
    out = tmp_path / "model.pt"
    code = main(["train-l2g", "--manifest", str(manifest), "--init-from", str(stage1), "--out", str(out),
                 "--epochs", "1", *L2G_OPTIONS, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0]
    assert not tmp_path.joinpath("model.pt").exists() and not tmp_path.joinpath("checkpoint.pt").exists()


def test_stage2_refuses_a_classifier_of_other_classes(manifest, stage1, tmp_path, capsys):
    state = torch.load(stage1, weights_only=True)
    state["class_names"] = [f"c{i}" for i in range(20)]
    foreign = tmp_path / "voc_cls.pt"
    torch.save(state, foreign)
    code = main(["train-l2g", "--manifest", str(manifest), "--init-from", str(foreign),
                 "--out", str(tmp_path / "model.pt"), "--epochs", "1", *L2G_OPTIONS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "trained for 20 classes" in err[0] and str(foreign) in err[0]


def test_ddp_over_two_cpu_processes(manifest, tmp_path):
    """torchrun with the gloo backend: the same DDP path a multi-GPU job takes."""
    out = tmp_path / "model.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "l2g_core.cli",
                             "train-cls", "--manifest", str(manifest), "--out", str(out), "--epochs", "1",
                             "--device", "cpu", *CLS_OPTIONS], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DDP rank 0 of 2" in result.stdout
    load_classifier(out)


def test_two_ddp_processes_train_as_one_process_on_the_global_batch(manifest, tmp_path):
    """--batch-size is the global batch: 2 gloo processes of 2 images each, accumulating 2 steps
    per update (no gradient all-reduce on the first), end where 1 process with batches of 4 ends.
    A saved backbone as init freezes BatchNorm (as the official recipes do), and random crop boxes
    are drawn per image of the global batch. A resume on another process count says why it
    starts again."""
    torch.manual_seed(3)
    init = tmp_path / "backbone.pt"
    torch.save(build_backbone("small").state_dict(), init)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    options = ["train-l2g", "--manifest", str(manifest), "--backbone", "small", "--init", str(init), "--epochs", "1",
               "--accumulate", "2", "--crop-layout", "random", "--device", "cpu", "--log-every", "1", *L2G_OPTIONS]
    two = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "l2g_core.cli",
                          *options, "--out", str(tmp_path / "two.pt")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    two_log = (tmp_path / "train_log.csv").read_text()
    one = subprocess.run(_l2g(*options, "--out", str(tmp_path / "one.pt")), capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    assert f"ignoring {tmp_path / 'checkpoint.pt'}: made by 2 DDP process(es), this run has 1; " \
           "starting from epoch 0" in one.stdout
    one_log = (tmp_path / "train_log.csv").read_text()
    assert len(one_log.splitlines()) == 1 + 3  # 24 images, 4 per step, 2 steps per update: 3 updates, one row each
    for row_one, row_two in zip(one_log.splitlines()[1:], two_log.splitlines()[1:], strict=True):
        assert [float(v) for v in row_one.split(",")] == pytest.approx([float(v) for v in row_two.split(",")],
                                                                      rel=1e-4)
    start = torch.load(init, weights_only=True)
    for key in ("state_dict", "local_state_dict"):
        weights_one = torch.load(tmp_path / "one.pt", weights_only=True)[key]
        weights_two = torch.load(tmp_path / "two.pt", weights_only=True)[key]
        for name, value in weights_one.items():
            torch.testing.assert_close(weights_two[name], value, rtol=1e-4, atol=1e-6)
    moved = [name for name, value in start.items() if not torch.equal(weights_one[name], value)]
    assert len(moved) >= 8  # the eight convolutions trained: the comparison is of trained weights


class _Numbers(torch.utils.data.Dataset):
    epoch = 0

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return {"image": torch.full((3,), float(index)), "label": torch.tensor(index % 2.0)}


class _Line(torch.nn.Linear):
    def param_groups(self):
        return [[self.weight], [self.bias], [], []]


def _count_gradient_reductions(rank, port, out_dir):
    """One of 2 gloo processes: 4 updates of 2 accumulated micro-steps on a linear model; writes
    how many gradient all-reduces DDP started."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from l2g_core.runtime import setup_runtime
    from l2g_core.training import Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    settings = TrainSettings(epochs=1, batch_size=2, lr=0.1, accumulate=2)
    trainer = Trainer({"line": _Line(3, 1)}, _Numbers(), settings, setup_runtime("cpu"), out_dir, {"test": 1})
    calls, seeds = [], []

    def counting_hook(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    trainer.wrapped["line"].register_comm_hook(None, counting_hook)
    def step(batch, generator):
        seeds.append(torch.initial_seed())
        return {"loss": (trainer.wrapped["line"](batch["image"])[:, 0] - batch["label"]).square().mean()}

    trainer.fit(step)
    (Path(out_dir) / f"reductions-{rank}").write_text(f"{len(calls)} {set(seeds)}")
    torch.distributed.destroy_process_group()


def test_accumulated_micro_steps_skip_the_gradient_all_reduce(tmp_path):
    """no_sync on all but the last micro-step: one all-reduce per update, not one per micro-step.
    Each process seeds its global RNGs (dropout) from (seed, rank, epoch)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_count_gradient_reductions, args=(port, str(tmp_path)), nprocs=2)
    # 16 items, global batch 2 (1 per process), 2 micro-steps per update: 8 micro-steps, 4 updates
    assert [(tmp_path / f"reductions-{rank}").read_text() for rank in (0, 1)] == \
        [f"4 {{{epoch_seed(0, 0, 0)}}}", f"4 {{{epoch_seed(0, 0, 1)}}}"]


def test_every_seed_rank_and_epoch_has_a_stream_of_its_own():
    # the old (seed + rank) * K + epoch made rank 1 of seed 0 the rank 0 of seed 1 (and epoch K of
    # a rank the epoch 0 of the next); seeds past 32 bits must not meet small ones either
    seeds = [0, 1, 2, 3, 7, 2**32, 2**32 + 1, 2**40]
    triples = [(seed, epoch, rank) for seed in seeds for epoch in (0, 1, 2, 1_000_003) for rank in range(8)]
    assert len({epoch_seed(*triple) for triple in triples}) == len(triples)
    assert epoch_seed(0, 0, 1) != epoch_seed(1, 0, 0)
    assert epoch_seed(5, 3, 2) == epoch_seed(5, 3, 2) < 2**64  # a function of the triple, a torch seed
    # and the streams themselves differ from the first draw on
    firsts = {tuple(torch.rand(4, generator=torch.Generator().manual_seed(epoch_seed(seed, 0, rank))).tolist())
              for seed in range(4) for rank in range(4)}
    assert len(firsts) == 16


def test_a_global_batch_that_does_not_split_over_the_processes_is_one_line():
    assert split_batch(TrainSettings(epochs=1, batch_size=6, lr=0.1), 2) == 3
    with pytest.raises(L2GError, match=r"^--batch-size 3 \(the global batch\) does not split evenly over 2 DDP "
                                       r"processes: give a multiple of 2$"):
        split_batch(TrainSettings(epochs=1, batch_size=3, lr=0.1), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (AMP and device placement)")
def test_stage1_on_cuda_with_amp(manifest, tmp_path):
    out = tmp_path / "model.pt"
    result = subprocess.run(_l2g("train-cls", "--manifest", str(manifest), "--out", str(out), "--epochs", "1",
                                 "--device", "cuda", "--precision", "bf16", *CLS_OPTIONS), capture_output=True, text=True)
    assert result.returncode == 0 and "GPU cuda:0" in result.stdout
