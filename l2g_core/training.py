"""The training loop shared by every stage.

SGD with the official parameter groups (1x / 2x / 10x / 20x the base learning rate for
pretrained weights / pretrained biases / new weights / new biases), a step or poly schedule,
gradient accumulation, the precision setting (fp32, tf32, or bf16 autocast on CUDA), DDP under
torchrun, a tqdm bar, a CSV loss log and a checkpoint after every epoch that holds everything
needed to continue exactly: models, optimizer, epoch and history. Data order and every random
draw are derived from (seed, epoch, step) and the global RNGs are reseeded at each epoch, so a
resumed run is bit-identical to an uninterrupted one on the CPU.

DDP keeps the recipe: `batch_size` is the global batch, split evenly over the processes. Rank r
takes positions r, r + W, r + 2W, ... of every global batch (W processes; see epoch_order), so
the processes together see exactly the images one process would, and since every loss is a mean
over equal per-image shares, DDP's average of the processes' gradients is the one-process
gradient of the global batch. What still differs is what depends on the process: dropout masks
(global RNGs, seeded per (seed, rank, epoch)), BatchNorm statistics in training mode (per
process; the official recipes freeze BatchNorm) and a loss averaged over a number of pixels that varies per
image (DeepLab's ignored label 255: averaged within each process first).
"""

import argparse
import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from l2g_core.data.augment import IMAGE_STATS, JITTER_FORMULAS
from l2g_core.data.manifest import load_manifest
from l2g_core.data.torch_data import DECODE_MODES, RESIZE_MODES, ImageOptions
from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path, file_sha256, remove_stale_temporaries, write_text
from l2g_core.runtime import PRECISIONS, check_precision, seed_everything, setup_runtime

LR_MULTIPLIERS = (1.0, 2.0, 10.0, 20.0)


@dataclass
class TrainSettings:
    epochs: int | None  # the budget: epochs, or optimizer updates (iterations), one of the two
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "step"  # "step": x gamma at each of step_epochs; "poly": (1 - t/T) ** poly_power
    step_epochs: list = field(default_factory=list)
    gamma: float = 0.1
    poly_power: float = 0.9
    poly_step: int = 1  # the poly factor changes every poly_step updates (deeplab-pytorch: 10)
    accumulate: int = 1
    seed: int = 0
    workers: int = 0
    precision: str = "bf16"  # fp32 | tf32 | bf16 (l2g_core.runtime.PRECISIONS); the CPU computes fp32
    log_every: int = 10
    iterations: int | None = None


def add_training_arguments(parser):
    group = parser.add_argument_group("training")
    budget = group.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int, help="training budget in epochs")
    budget.add_argument("--iterations", type=int, help="training budget in optimizer updates (DeepLab style)")
    group.add_argument("--batch-size", type=int, required=True,
                       help="images per step, all processes together (DDP splits it evenly)")
    group.add_argument("--lr", type=float, required=True, help="base learning rate (new layers get 10x/20x)")
    group.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    group.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                       help="Nesterov momentum (official L2G: on; deeplab-pytorch: off)")
    group.add_argument("--schedule", choices=("step", "poly"), default="step", help="learning-rate schedule")
    group.add_argument("--step-epochs", type=int, nargs="*", default=[], help="epochs at which the step schedule decays")
    group.add_argument("--gamma", type=float, default=0.1, help="step schedule decay factor (default 0.1)")
    group.add_argument("--poly-power", type=float, default=0.9, help="poly schedule power (default 0.9)")
    group.add_argument("--poly-step", type=int, default=1,
                       help="poly schedule: the factor changes every N updates (deeplab-pytorch's LR_DECAY 10)")
    group.add_argument("--accumulate", type=int, default=1, help="steps of gradient accumulation per update")
    group.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation and crops")
    group.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    group.add_argument("--precision", choices=PRECISIONS, default="bf16",
                       help="fp32: TF32 off for matmul and cuDNN (the official recipes); tf32: TF32 on; bf16 "
                            "(default): bf16 autocast on CUDA. The CPU computes fp32 whatever this says")
    group.add_argument("--log-every", type=int, default=10, help="optimizer steps between CSV log rows")
    group.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def add_image_arguments(parser):
    """The input pipeline of the classifier and L2G stages (torch_data.ImageOptions); the
    defaults are the official L2G VOC loader's."""
    group = parser.add_argument_group("input images")
    group.add_argument("--resize", choices=RESIZE_MODES, default="short_crop",
                       help="short_crop (official VOC): short side to --short-side, random input-size crop; "
                            "warp: resize to input-size x input-size")
    group.add_argument("--short-side", type=int, default=512, help="short side before the crop (default 512)")
    group.add_argument("--crop-axes", choices=("official", "image"), default="official",
                       help="official: the crop box drawn as the official loader draws it (left edge over the "
                            "height, top over the width, black beyond the image); image: inside the image")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                       help="random horizontal flips (official L2G: none)")
    group.add_argument("--jitter", type=float, nargs=4, default=[0.3, 0.3, 0.3, 0.1],
                       metavar=("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"),
                       help="colour jitter strengths (official: 0.3 0.3 0.3 0.1; 0 turns one off)")
    group.add_argument("--jitter-formula", choices=JITTER_FORMULAS, default="official",
                       help="official: torchvision's PIL ColorJitter as the official loaders (shuffled, luma "
                            "grey, rounded after each operation); float: fixed order, channel-mean grey, one rounding")
    group.add_argument("--image-stats", choices=tuple(IMAGE_STATS), default="imagenet",
                       help="normalisation mean and std (the official COCO loader uses coco)")
    group.add_argument("--decode", choices=DECODE_MODES, default="cpu",
                       help="cpu: the loader workers decode and augment (PIL); gpu: they only read the files "
                            "and draw, each batch is decoded (nvjpeg) and augmented on the training device, "
                            "for few CPU cores per GPU (the same samples but for rare roundings)")


def image_options_from_args(args, **extra):
    if args.short_side < args.input_size and args.resize == "short_crop":
        raise L2GError(f"--short-side {args.short_side} is smaller than --input-size {args.input_size}")
    if min(args.jitter) < 0 or args.jitter[3] > 0.5:
        raise L2GError("--jitter strengths must be >= 0 (hue at most 0.5)")
    return ImageOptions(resize=args.resize, short_side=args.short_side, crop_axes=args.crop_axes, flip=args.flip,
                        jitter=tuple(args.jitter), jitter_formula=args.jitter_formula, stats=args.image_stats,
                        decode=args.decode, **extra)


def settings_from_args(args):
    names = TrainSettings.__dataclass_fields__
    settings = TrainSettings(**{name: getattr(args, name) for name in names})
    check_settings(settings)
    return settings


def start_training(args, stage):
    """The common start of a training stage: settings checked, device chosen (and said), seeded.

    Returns (manifest, settings, runtime)."""
    manifest = load_manifest(args.manifest)
    settings = settings_from_args(args)
    # every training stage feeds fixed-size crops: cuDNN may pick its kernels once per shape
    runtime = setup_runtime(args.device, precision=settings.precision, fixed_shapes=True)
    if runtime.is_main:
        print(f"{stage} on {manifest['name']}: {runtime.describe()}", flush=True)
    seed_everything(settings.seed)
    return manifest, settings, runtime


def check_settings(s):
    if (s.epochs is None) == (s.iterations is None):
        raise L2GError("give the training budget as --epochs or --iterations, one of them")
    for name in ("epochs", "iterations", "batch_size", "accumulate", "log_every", "poly_step"):
        if getattr(s, name) is not None and getattr(s, name) < 1:
            raise L2GError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
    if s.lr <= 0:
        raise L2GError(f"--lr must be positive, got {s.lr}")
    if s.weight_decay < 0 or not 0 <= s.momentum < 1:
        raise L2GError("--weight-decay must be >= 0 and --momentum in [0, 1)")
    check_precision(s.precision)


def build_optimizer(models, settings):
    """SGD over the four parameter groups of every model (1x / 2x / 10x / 20x the base learning
    rate). A model's `decay_multipliers` scale the weight decay per group: deeplab-pytorch gives
    the ASPP biases none (DeepLabV2), the L2G classifiers decay every group."""
    groups = []
    for model in models:
        decays = getattr(model, "decay_multipliers", (1.0, 1.0, 1.0, 1.0))
        for params, multiplier, decay in zip(model.param_groups(), LR_MULTIPLIERS, decays):
            if params:
                groups.append({"params": params, "lr": settings.lr * multiplier, "base_lr": settings.lr * multiplier,
                               "weight_decay": settings.weight_decay * decay})
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay, nesterov=settings.nesterov and settings.momentum > 0)


def lr_factor(settings, epoch, iteration, total_iterations):
    """Multiplier of every base learning rate at optimizer update `iteration` (0-based) of `epoch`.

    poly: (1 - t / T) ** poly_power with t rounded down to a multiple of poly_step, as
    deeplab-pytorch's PolynomialLR (step_size 10) and L2G's COCO PolyOptimizer (step 1) compute it.
    """
    if settings.schedule == "poly":
        step = iteration - iteration % settings.poly_step
        return (1.0 - step / total_iterations) ** settings.poly_power
    return settings.gamma ** sum(epoch >= e for e in settings.step_epochs)


def fingerprint(obj):
    """A short hash of the settings a checkpoint was made with; a resumed run must match it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def epoch_order(num_items, seed, epoch, rank=0, world_size=1):
    """The shuffled indices one process visits in one epoch (equal counts across processes).

    Strided: with per-process batches of b = B / W, batch i of rank r holds the global order's
    positions i*B + r + W*k (k < b), so the W batches of step i are together the one-process
    batch i of size B."""
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    usable = num_items - num_items % world_size
    return order[:usable][rank::world_size].tolist()


def step_seed(seed, epoch, index):
    """The seed of every random draw (crops, ...) of one global step: a function of where it is,
    only. Every process draws for the whole global batch and keeps its own rows (`own_rows`)."""
    return ((seed * 1009 + epoch) * 1_000_003 + index) * 257


def epoch_seed(seed, epoch, rank):
    """The seed of the global RNGs (dropout) of one process in one epoch: 64 bits drawn from the
    stream NumPy's SeedSequence spawns for (rank, epoch) under the run's seed, so distinct triples
    give unrelated streams (an arithmetic mix such as (seed + rank) * K + epoch made rank 1 of
    seed s the rank 0 of seed s + 1). spawn_key rather than one entropy list: SeedSequence drops
    trailing zero words of its entropy, so [s, r, 0] and a longer seed could meet."""
    sequence = np.random.SeedSequence(seed, spawn_key=(rank, epoch))
    return int(sequence.generate_state(1, np.uint64)[0])


def own_rows(draws, runtime):
    """This process's rows of per-image draws made for the whole global batch (epoch_order)."""
    return draws[runtime.rank::runtime.world_size]


def split_batch(settings, world_size):
    """Images per step and process: the global batch split evenly, or a one-line error."""
    if settings.batch_size % world_size:
        raise L2GError(f"--batch-size {settings.batch_size} (the global batch) does not split evenly over "
                       f"{world_size} DDP processes: give a multiple of {world_size}")
    return settings.batch_size // world_size


class Trainer:
    """Runs `step(batch, generator) -> {"loss": tensor, other name: tensor}` over epochs.

    models: {name: module}; every model is trained and checkpointed under its name.
    describe: the stage's own settings; inputs: the files it learns from (manifest, init model,
    label manifest). Both, with the training settings, make the fingerprint a resume must match.
    """

    def __init__(self, models, dataset, settings, runtime, out_dir, describe, inputs=()):
        self.settings = settings
        self.runtime = runtime
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        # channels-last is the layout the GPU's convolution kernels run fastest on
        layout = torch.channels_last if runtime.device.type == "cuda" else torch.contiguous_format
        self.models = {name: model.to(runtime.device, memory_format=layout) for name, model in models.items()}
        self.optimizer = build_optimizer(self.models.values(), settings)
        self.wrapped = {name: DistributedDataParallel(m) if runtime.distributed else m
                        for name, m in self.models.items()}
        self.batch_size = split_batch(settings, runtime.world_size)
        # the process count is part of the run: a resume on another count starts again, and says so
        self.fingerprint = fingerprint({"settings": asdict(settings), "describe": describe,
                                        "world_size": runtime.world_size,
                                        "inputs": {str(p): file_sha256(p) for p in inputs if p}})
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.history = []
        self.start_epoch = 0
        per_epoch = len(dataset) // runtime.world_size // self.batch_size  # as epoch_order shards
        if per_epoch < 1:
            raise L2GError(f"only {len(dataset)} training images for a batch size of {settings.batch_size}")
        self.updates_per_epoch = max(1, per_epoch // settings.accumulate)
        if settings.iterations is not None:  # the last epoch stops part-way at the budget
            self.total_updates = settings.iterations
            self.epochs = -(-settings.iterations // self.updates_per_epoch)
        else:
            self.total_updates = self.updates_per_epoch * settings.epochs
            self.epochs = settings.epochs

    def autocast(self):
        if self.runtime.autocast_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def resume(self):
        """Continue from checkpoint.pt when it was made with the same settings; say what happened."""
        if self.runtime.is_main:  # a run killed while writing a checkpoint leaves a hidden temporary
            remove_stale_temporaries(self.checkpoint_path)
        if not self.checkpoint_path.is_file():
            return "starting from epoch 0"
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as error:  # e.g. emptied by a crash of its machine before the data reached the disk
            return f"ignoring {self.checkpoint_path}: unreadable ({type(error).__name__}); starting from epoch 0"
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            saved = state.get("world_size", 1) if isinstance(state, dict) else 1
            why = f"made by {saved} DDP process(es), this run has {self.runtime.world_size}" \
                if saved != self.runtime.world_size else "made with other settings or inputs"
            return f"ignoring {self.checkpoint_path}: {why}; starting from epoch 0"
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        return f"resumed from {self.checkpoint_path} after epoch {state['epoch'] + 1}"

    def save_checkpoint(self, epoch):
        if not self.runtime.is_main:
            return
        state = {"models": {n: m.state_dict() for n, m in self.models.items()},
                 "optimizer": self.optimizer.state_dict(), "epoch": epoch, "history": self.history,
                 "world_size": self.runtime.world_size, "fingerprint": self.fingerprint}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)
        self.write_log()

    def write_log(self):
        if not self.history:
            return
        names = list(self.history[0])
        lines = [",".join(names)] + [",".join(_fmt(row[n]) for n in names) for row in self.history]
        write_text(self.out_dir / "train_log.csv", "\n".join(lines) + "\n")

    def loader(self, epoch):
        self.dataset.epoch = epoch
        order = epoch_order(len(self.dataset), self.settings.seed, epoch, self.runtime.rank, self.runtime.world_size)
        # a dataset may collate its own way (LabelledImages with decode gpu: raw bytes and draws)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=order, drop_last=True,
                          num_workers=self.settings.workers, pin_memory=self.runtime.device.type == "cuda",
                          collate_fn=getattr(self.dataset, "collate_fn", None))

    def set_lr(self, epoch, update):
        factor = lr_factor(self.settings, epoch, update, self.total_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def no_sync(self, micro_step):
        """DDP's gradient all-reduce only on the last micro-step of an accumulated update: the
        others add to the local gradients (DistributedDataParallel.no_sync)."""
        stack = contextlib.ExitStack()
        if self.runtime.distributed and micro_step:
            for model in self.wrapped.values():
                stack.enter_context(model.no_sync())
        return stack

    def mean_losses(self, sums, count):
        """The losses since the last log row, averaged over the steps and (DDP) the processes: the
        one read of device values, once per log row."""
        names = list(sums)
        values = torch.stack([sums[n] for n in names]) / count
        if self.runtime.distributed:
            torch.distributed.all_reduce(values)
            values /= self.runtime.world_size
        return dict(zip(names, values.tolist()))

    def fit(self, step):
        message = self.resume()
        if self.runtime.is_main:
            print(message, flush=True)
        s = self.settings
        # the last step of the input pipeline, on the device (LabelledImages with decode gpu decodes there)
        finish = getattr(self.dataset, "device_batch", lambda batch, device: batch)
        for epoch in range(self.start_epoch, self.epochs):
            seed_everything(epoch_seed(s.seed, epoch, self.runtime.rank))
            for model in self.models.values():
                model.train()
            sums, count = {}, 0
            update = epoch * self.updates_per_epoch
            batches = min(self.updates_per_epoch, self.total_updates - update) * s.accumulate
            bar = tqdm(total=batches, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                       disable=not self.runtime.is_main, mininterval=2.0)
            self.optimizer.zero_grad(set_to_none=True)
            for index, batch in enumerate(self.loader(epoch)):
                if index >= batches:
                    break
                batch = {k: v.to(self.runtime.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in batch.items()}
                batch = finish(batch, self.runtime.device)
                generator = torch.Generator().manual_seed(step_seed(s.seed, epoch, index))
                last_micro_step = (index + 1) % s.accumulate == 0
                with self.no_sync(not last_micro_step):
                    with self.autocast():
                        losses = step(batch, generator)
                    (losses["loss"] / s.accumulate).backward()
                for name, value in losses.items():  # summed on the device: read at log time, no sync per step
                    sums[name] = sums.get(name, 0.0) + value.detach().double()
                count += 1
                if last_micro_step:
                    self.set_lr(epoch, update)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    update += 1
                    if update % s.log_every == 0 or (index + 1) == batches:
                        self.history.append({"epoch": epoch + 1, "update": update,
                                             "lr": self.optimizer.param_groups[0]["lr"],
                                             **self.mean_losses(sums, count)})
                        bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
                        sums, count = {}, 0
                bar.update(1)
            bar.close()
            self.save_checkpoint(epoch)
            self.runtime.barrier()
        return self.history


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else str(value)
