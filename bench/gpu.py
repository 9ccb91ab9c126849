"""Item 10, the GPU check (`python -m bench --gpu`; a CUDA device is required, under 8 minutes).

Each part runs in the configuration the stages run in: the runtime set up as the stage sets it up
(l2g_core.runtime.setup_runtime: precision switches, cuDNN's kernel search for training only),
the Trainer's models (channels-last on CUDA), optimizer groups and autocast, the layers the
recipes freeze (every BatchNorm and the stem of an ImageNet-initialised backbone), and the
figure it must reach (TARGETS; docs/benchmarks.md lists them before the first run):

1. The L2G training update of the voc recipe (train_l2g: ResNet-38 + PCM global and local
   networks, batch 3 at 448, 6 crops of 320, the official targets, random weights) at each
   precision (fp32 = the official recipe, tf32, bf16): seconds per update, TFLOP/s (the FLOPs of
   this very update, frozen layers included, counted on the meta device) and the model FLOP
   utilisation against the exact card's dense peak of that precision (CARDS, by name and memory).
2. No host-device synchronisation: two L2G updates (fp32 and bf16) and two DeepLab micro-steps of
   the voc recipe (train_seg: ResNet-101 MSC, batch 5 at 321, the labels resized per output) under
   torch.cuda.set_sync_debug_mode("error").
3. CAM export as `l2g export-cams` runs it (l2g_core.cams.image_cams: ResNet-38 + PCM, VOC-sized
   images, scales 0.5-2 with flips, batch 4, 4 loader workers) in fp32 and bf16: images/s, the
   GPU's utilisation while it runs (nvidia-smi, every 0.2 s), the largest bf16 - fp32 difference.
4. Prediction as `l2g predict-seg` runs it (network_views: the voc DeepLab-v2 ResNet-101 MSC at
   scale 1, batch 1, fp32): images/s and the GPU's utilisation.
5. `l2g with-gpus --count 1 --ddp -- l2g train-cls --device cuda` on a small synthetic set and,
   where two GPUs are visible, `--count 2`: two DDP processes under torchrun, NCCL.
6. The CUDA tests that the CPU test suite skips.
7. The GPU input path (decode: gpu, bench/gpu_input.py) of the classifier and L2G inputs of the
   voc recipe, its decode (nvjpeg) and augmentation on the card: samples/s per CPU core against
   what 40% of the card's bf16 peak trains, fed by INPUT_CORES cores per GPU (a 2-GPU box with
   8 cores), and its samples against the CPU path's.
"""

import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import BIN, REPO, synthetic_dataset, voc_sized_dataset

# Dense (no sparsity) peak FLOP/s of each card, from NVIDIA's data sheets: bf16 and tf32 on the
# tensor cores, fp32 without them (what fp32 convolutions run on once TF32 is off).
CARDS = {
    "H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "tf32": 378.0e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60.0e12},
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200 NVL": {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60.0e12},
    **{f"A100 {form} {size}": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
       for form in ("SXM4", "PCIe") for size in ("40GB", "80GB")},
    "L40S": {"bf16": 362.05e12, "tf32": 183.0e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}
# What each part must reach (docs/benchmarks.md shows this list before the first run).
MFU_TARGET = 0.40  # the L2G update in bf16, of the card's dense bf16 peak
BUSY_TARGET = 0.90  # export and prediction: the GPU's mean utilisation (GPU-bound)
CAM_TOLERANCE = 0.05  # bf16 CAMs against fp32 (tests/test_export_cams.py holds the stage to it too)
TARGETS = [
    ("L2G update, voc recipe, bf16 (precision: bf16)", f"MFU >= {MFU_TARGET:.0%} of the card's dense bf16 peak"),
    ("L2G update, fp32 (official) and tf32", "measured, no target: the cost of the official precision"),
    ("L2G and DeepLab steps under set_sync_debug_mode(\"error\")", "no host-device synchronisation"),
    ("CAM export, ResNet-38, VOC-sized images, scales 0.5-2 + flip, 4 workers (fp32, bf16)",
     f"GPU-bound: mean GPU utilisation >= {BUSY_TARGET:.0%}; bf16 CAMs within {CAM_TOLERANCE} of fp32"),
    ("Prediction, DeepLab-v2 ResNet-101 MSC, scale 1 (fp32)", f"GPU-bound: mean GPU utilisation >= {BUSY_TARGET:.0%}"),
    ("l2g with-gpus --ddp: 1 process; 2 processes (NCCL) where 2 GPUs are visible", "exit 0, on the GPU(s)"),
    ("the CUDA tests the CPU suite skips", "pass"),
    ("GPU input path (decode: gpu), classifier input of the voc recipe, batch 8, VOC-sized JPEGs",
     "samples/s per CPU core x 4 cores >= what 40% of the card's bf16 peak trains; within a grey level of decode cpu"),
]
INPUT_CORES = 4  # the CPU cores per GPU of a 2-GPU box with 8 cores: the target above
CUDA_TESTS = ["tests/test_training.py::test_stage1_on_cuda_with_amp",
              "tests/test_export_cams.py::test_bf16_export_is_the_fp32_export_within_tolerance",
              "tests/test_gpu_augment.py::test_the_gpu_path_on_cuda_differs_by_the_jpeg_decoder_only"]


def card_name(name, memory_gib):
    """The CARDS entry of a device from its name (torch.cuda.get_device_name) and memory (GiB),
    or None for a card not in the table: SXM, PCIe and NVL parts share a name prefix, and A100s
    differ only in memory."""
    upper = name.upper().replace("-", " ")
    if "H200" in upper:
        return "H200 NVL" if "NVL" in upper else "H200"
    if "H100" in upper:
        if "NVL" in upper or 84 < memory_gib < 100:  # 94 GB of HBM3: the NVL part
            return "H100 NVL"
        return "H100 PCIe" if "PCIE" in upper else "H100 SXM"  # "NVIDIA H100 80GB HBM3" is the SXM part
    if "A100" in upper:
        return f"A100 {'PCIe' if 'PCIE' in upper else 'SXM4'} {'80GB' if memory_gib > 50 else '40GB'}"
    if "L40S" in upper:
        return "L40S"
    if re.search(r"\bA10\b", upper):
        return "A10"
    return None


def voc_section(section):
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["voc"][section]


def voc_l2g_options(precision):
    """The voc train_l2g section as train-l2g's parsed options (ResNet-38 + PCM), at `precision`."""
    import argparse

    from l2g_core.stages import train_l2g
    from l2g_core.workflow_support import cli_flags

    section = {k: v for k, v in voc_section("train_l2g").items() if k != "start"}
    section["precision"] = precision
    parser = argparse.ArgumentParser()
    train_l2g.configure(parser)
    return parser.parse_args(["--manifest", "-", "--out", "-", "--backbone", "resnet38", "--pcm",
                              *shlex.split(cli_flags(section))])


def l2g_networks(num_classes=20):
    """The global and local networks as the voc recipe starts them: ResNet-38 + PCM with every
    BatchNorm and the stem frozen (what an ImageNet init does; the weights here are random)."""
    from l2g_core.models import build_classifier

    return {name: build_classifier("resnet38", num_classes, pcm=True, freeze=True) for name in ("global", "local")}


def l2g_batch(args, device, num_classes=20):
    import torch

    size, count = args.input_size, args.batch_size
    labels = torch.zeros(count, num_classes, device=device)
    labels[torch.arange(count), torch.tensor([3, 8, 14])[:count]] = 1
    return {"image": torch.randn(count, 3, size, size, device=device), "label": labels,
            "saliency": torch.rand(count, 1, size, size, device=device)}


def l2g_update_flops(args):
    """FLOPs of one L2G update of this configuration (forward, targets, loss, backward; frozen
    layers get no weight gradients), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from l2g_core.runtime import Runtime
    from l2g_core.stages.train_l2g import l2g_losses, step_boxes

    meta = torch.device("meta")
    with meta:
        nets = {name: net.train() for name, net in l2g_networks().items()}
    with FlopCounterMode(display=False) as counter:
        boxes = step_boxes(args.batch_size, args, torch.Generator().manual_seed(0), Runtime(meta))
        losses = l2g_losses(nets["global"], nets["local"], l2g_batch(args, meta), boxes, args, nets["global"].stride)
        losses["loss"].backward()
    return counter.get_total_flops()


def l2g_trainer(device, precision, workdir):
    """(update function, options, Trainer) of the voc recipe's L2G stage at `precision`: the
    runtime, models, optimizer and autocast exactly as `l2g train-l2g` sets them up."""
    import torch

    from l2g_core.runtime import setup_runtime
    from l2g_core.stages.train_l2g import l2g_losses, step_boxes
    from l2g_core.training import Trainer, settings_from_args

    args = voc_l2g_options(precision)
    settings = settings_from_args(args)
    runtime = setup_runtime(device, precision=settings.precision, fixed_shapes=True)
    trainer = Trainer(l2g_networks(), [None] * args.batch_size, settings, runtime, workdir, {"bench": "gpu"})
    net_g, net_l = trainer.wrapped["global"], trainer.wrapped["local"]
    batch = l2g_batch(args, runtime.device)
    generator = torch.Generator().manual_seed(0)

    def update():
        with trainer.autocast():
            losses = l2g_losses(net_g, net_l, batch, step_boxes(args.batch_size, args, generator, runtime), args,
                                trainer.models["global"].stride)
        losses["loss"].backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return update, args, trainer


def deeplab_micro_step(device, workdir):
    """A micro-step of the voc recipe's DeepLab stage (train_seg: ResNet-101 MSC, frozen
    BatchNorm, batch 5 at 321), set up as `l2g train-seg` sets it up, on random data."""
    import torch

    from l2g_core.models.deeplab import build_deeplab, segmentation_loss
    from l2g_core.runtime import setup_runtime
    from l2g_core.training import Trainer, TrainSettings

    section = voc_section("train_seg")
    runtime = setup_runtime(device, precision=section["precision"], fixed_shapes=True)
    model = build_deeplab("resnet101", 21, rates=section["aspp_rates"], msc_scales=section["msc_scales"])
    model.base.backbone.freeze_pretrained(stem=False)  # what the recipe's pretrained init does (random weights here)
    settings = TrainSettings(iterations=1, batch_size=section["batch_size"], lr=section["lr"],
                             precision=section["precision"])
    trainer = Trainer({"model": model}, [None] * settings.batch_size, settings, runtime, workdir, {"bench": "gpu"})
    crop = section["crop_size"]
    images = torch.randn(settings.batch_size, 3, crop, crop, device=runtime.device)
    labels = torch.randint(0, 21, (settings.batch_size, crop, crop), device=runtime.device)
    labels[:, :10] = 255

    def micro_step():
        with trainer.autocast():
            outputs = trainer.wrapped["model"](images)
        segmentation_loss(outputs, labels, resolution=section["loss_resolution"]).backward()
    return micro_step


def timed(function, repeats):
    import torch

    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def no_sync_error(function):
    """None when `function` runs without a host-device synchronisation, else the error's first line."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        function()
        return None
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()


class Utilisation:
    """The GPU's mean utilisation (nvidia-smi's utilization.gpu: the share of time a kernel ran)
    over a `with` block, sampled every `interval` seconds in a thread; None without nvidia-smi."""

    def __init__(self, index=0, interval=0.2):
        self.command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                        "-i", str(index)]
        self.interval, self.samples, self.stop = interval, [], threading.Event()

    def sample(self):
        while not self.stop.is_set():
            try:
                done = subprocess.run(self.command, capture_output=True, text=True, timeout=5)
                self.samples.append(float(done.stdout.strip().splitlines()[0]) / 100)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self.stop.wait(self.interval)

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else None


def device_index():
    """The physical index nvidia-smi knows the current device by (CUDA_VISIBLE_DEVICES may renumber)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    first = visible.split(",")[0].strip() if visible else "0"
    return first if first else "0"


def training(ctx, peaks):
    flops = None
    result = {}
    for precision in ("fp32", "tf32", "bf16"):
        update, args, _ = l2g_trainer("cuda", precision, ctx.folder("gpu", f"l2g_{precision}"))
        flops = flops or l2g_update_flops(args)
        seconds = timed(update, 3 if ctx.quick else 10)
        peak = peaks.get(precision) if peaks else None
        result[precision] = {"s_per_update": seconds, "tflop_per_s": flops / seconds / 1e12,
                             "mfu": flops / seconds / peak if peak else None,
                             "sync_error": no_sync_error(lambda: [update() for _ in range(2)])
                             if precision in ("fp32", "bf16") else None}
    result["flop_per_update"] = flops
    micro_step = deeplab_micro_step("cuda", ctx.folder("gpu", "deeplab"))
    result["deeplab_s_per_micro_step"] = timed(micro_step, 2 if ctx.quick else 5)
    result["deeplab_sync_error"] = no_sync_error(lambda: [micro_step() for _ in range(2)])
    return result


def export(ctx):
    import torch

    from l2g_core.cams import cams_of_inputs, image_cams, scaled_inputs
    from l2g_core.data.layout import VOCLayout
    from l2g_core.data.manifest import load_manifest, split_ids
    from l2g_core.models import build_classifier
    from l2g_core.runtime import setup_runtime

    manifest = load_manifest(voc_sized_dataset(ctx, 8 if ctx.quick else 48))
    layout, ids = VOCLayout(manifest["root"]), split_ids(manifest, "train")
    labels = {i: [1 + n % 20] for n, i in enumerate(ids)}
    torch.manual_seed(0)
    model = build_classifier("resnet38", 20, pcm=True).cuda().eval()
    scales, result, maps = [0.5, 1.0, 1.5, 2.0], {}, {}
    for precision in ("fp32", "bf16"):
        runtime = setup_runtime("cuda", precision=precision)  # as export-cams: no kernel search
        run = lambda: list(image_cams(model, layout, ids, labels, scales, True, 4, workers=4,  # noqa: E731
                                      amp=runtime.autocast_bf16))
        run()
        with Utilisation(device_index()) as busy:
            start = time.perf_counter()
            maps[precision] = run()
            seconds = time.perf_counter() - start
        result[precision] = {"images_per_s": len(ids) / seconds, "gpu_busy": busy.mean}
    result["max_abs_diff_bf16_fp32"] = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(maps["fp32"], maps["bf16"]))
    image = np.stack([layout.load_image(ids[0])])
    inputs = [scaled_inputs(image, scale, "imagenet").pin_memory() for scale in scales]
    result["sync_error"] = no_sync_error(lambda: cams_of_inputs(model, inputs, image.shape[1:3], True, True))
    return result


def prediction(ctx):
    from types import SimpleNamespace

    import torch

    from l2g_core.data.layout import VOCLayout
    from l2g_core.data.manifest import load_manifest, split_ids
    from l2g_core.models.deeplab import build_deeplab
    from l2g_core.runtime import setup_runtime
    from l2g_core.stages.predict_seg import network_views

    seg, predict = voc_section("train_seg"), voc_section("predict_seg")
    manifest = load_manifest(voc_sized_dataset(ctx, 8 if ctx.quick else 48))
    layout, ids = VOCLayout(manifest["root"]), split_ids(manifest, "train")
    runtime = setup_runtime("cuda")  # as predict-seg
    torch.manual_seed(0)
    model = build_deeplab("resnet101", 21, rates=seg["aspp_rates"], msc_scales=seg["msc_scales"]).cuda().eval()
    args = SimpleNamespace(batch_size=predict["batch_size"], scales=predict["scales"], flip=predict["flip"])
    list(network_views(model, layout, ids[:2], args, runtime.device))
    with Utilisation(device_index()) as busy:
        start = time.perf_counter()
        count = sum(1 for _ in network_views(model, layout, ids, args, runtime.device))
        seconds = time.perf_counter() - start
    return {"images_per_s": count / seconds, "gpu_busy": busy.mean}


def with_gpus_ddp(ctx, count):
    manifest = synthetic_dataset(ctx, 16, 64)
    out = ctx.folder("gpu", f"with_gpus_{count}") / "model.pt"
    command = [str(BIN / "l2g"), "with-gpus", "--count", str(count), "--ddp", "--", str(BIN / "l2g"), "train-cls",
               "--manifest", str(manifest), "--out", str(out), "--epochs", "1", "--batch-size", "4",
               "--input-size", "64", "--lr", "0.01", "--device", "cuda", "--precision", "bf16"]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="4"))
    ranks = re.findall(r"DDP rank \d of \d", done.stdout)
    return {"returncode": done.returncode, "on_gpu": "GPU cuda:0" in done.stdout and Path(out).is_file(),
            "ranks": ranks, "tail": (done.stdout + done.stderr)[-400:]}


def cuda_tests():
    done = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-rs", "-n", "0", *CUDA_TESTS],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return {"returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-1] if done.stdout else ""}


def input_path(ctx, peaks):
    """The GPU input path of the classifier and L2G inputs (bench.gpu_input) with its device step
    on CUDA, and the samples/s that 40% of the card's bf16 peak trains (None for an unknown card)."""
    from bench.gpu_input import measure
    from bench.loader import UTILISATION, training_flops

    figures = measure(ctx, "cuda")
    for kind, f in figures.items():
        f["card_samples_per_s_at_40pct"] = UTILISATION * peaks["bf16"] / training_flops(kind) if peaks else None
    return figures


def pct(value):
    return f"{value:.0%}" if value is not None else "unknown"


def run(ctx):
    import torch

    name = torch.cuda.get_device_name()
    memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    card = card_name(name, memory_gib)
    peaks = CARDS.get(card)
    train, cams, predict = training(ctx, peaks), export(ctx), prediction(ctx)
    ddp = {1: with_gpus_ddp(ctx, 1)}
    if torch.cuda.device_count() >= 2:
        ddp[2] = with_gpus_ddp(ctx, 2)
    tests = cuda_tests()
    inputs = input_path(ctx, peaks)
    fast, official = train["bf16"], train["fp32"]
    syncs = {"l2g_fp32": official["sync_error"], "l2g_bf16": fast["sync_error"],
             "deeplab": train["deeplab_sync_error"], "export": cams["sync_error"]}
    ddp_ok = all(d["returncode"] == 0 and d["on_gpu"] for d in ddp.values())
    inputs_close = all(f["mean_grey_level_diff"] < 1 and f["saliency_equal"] for f in inputs.values())
    agree = all(error is None for error in syncs.values()) and ddp_ok and tests["returncode"] == 0 and inputs_close
    cls_input, need = inputs["classifier"], inputs["classifier"]["card_samples_per_s_at_40pct"]
    input_met = None if need is None else \
        cls_input["gpu_path_samples_per_s_per_core"] * INPUT_CORES >= need and inputs_close
    mfu_met = fast["mfu"] >= MFU_TARGET if fast["mfu"] is not None else None
    busy = {key: value["gpu_busy"] for key, value in (("export_fp32", cams["fp32"]), ("export_bf16", cams["bf16"]),
                                                      ("prediction", predict))}

    def bound(*keys):  # GPU-bound: utilisation at the target (None where nvidia-smi could not say)
        return None if any(busy[k] is None for k in keys) else all(busy[k] >= BUSY_TARGET for k in keys)
    export_met = bound("export_fp32", "export_bf16")
    if export_met is not None:
        export_met = export_met and cams["max_abs_diff_bf16_fp32"] <= CAM_TOLERANCE
    two = ddp.get(2)
    return {"item": "gpu", "agree": agree,
            "setup": {"device": name, "memory_gib": round(memory_gib, 1), "card": card, "peaks_flop_per_s": peaks},
            "check": {"sync_errors": syncs, "with_gpus_ddp": {str(k): v for k, v in ddp.items()}, "cuda_tests": tests},
            "figures": {"training": train, "export": cams, "prediction": predict, "input_path": inputs},
            "rows": [
                {"measure": f"L2G update, voc recipe (batch 3 at 448, 6 crops of 320), {card or name}",
                 "pipeline": f"{fast['s_per_update']:.3f} s bf16, MFU {pct(fast['mfu'])}",
                 "reference": f"{official['s_per_update']:.3f} s fp32 (official), tf32 "
                              f"{train['tf32']['s_per_update']:.3f} s",
                 "ratio": official["s_per_update"] / fast["s_per_update"],
                 "target": f"MFU >= {MFU_TARGET:.0%} of bf16 peak", "met": mfu_met,
                 "check": f"{fast['tflop_per_s']:.0f} TFLOP/s bf16, {official['tflop_per_s']:.0f} fp32 "
                          f"(MFU {pct(official['mfu'])} of the fp32 peak)"},
                {"measure": "host-device syncs: L2G update fp32 and bf16, DeepLab MSC micro-step, CAM export",
                 "pipeline": "none" if all(e is None for e in syncs.values()) else
                 "; ".join(f"{k}: {e}" for k, e in syncs.items() if e),
                 "reference": "", "ratio": None, "target": "none",
                 "met": all(e is None for e in syncs.values()),
                 "check": f"DeepLab micro-step {train['deeplab_s_per_micro_step']:.3f} s"},
                {"measure": "CAM export, ResNet-38, VOC-sized images, scales 0.5-2 + flip, 4 workers",
                 "pipeline": f"{cams['bf16']['images_per_s']:.1f} img/s bf16 (GPU busy {pct(busy['export_bf16'])})",
                 "reference": f"{cams['fp32']['images_per_s']:.1f} img/s fp32 (GPU busy {pct(busy['export_fp32'])})",
                 "ratio": cams["bf16"]["images_per_s"] / cams["fp32"]["images_per_s"],
                 "target": f"GPU busy >= {BUSY_TARGET:.0%}", "met": export_met,
                 "check": f"max |bf16 - fp32| {cams['max_abs_diff_bf16_fp32']:.4f} (at most {CAM_TOLERANCE})"},
                {"measure": "prediction, DeepLab-v2 ResNet-101 MSC, scale 1, fp32",
                 "pipeline": f"{predict['images_per_s']:.1f} img/s (GPU busy {pct(busy['prediction'])})",
                 "reference": "", "ratio": None, "target": f"GPU busy >= {BUSY_TARGET:.0%}", "met": bound("prediction"),
                 "check": ""},
                {"measure": "l2g with-gpus --ddp -- l2g train-cls: 1 process; 2 (NCCL) where 2 GPUs are visible",
                 "pipeline": ("ran on the GPU" if ddp[1]["on_gpu"] else f"FAILED: {ddp[1]['tail']}")
                 + ("" if two is None else "; 2 processes ran" if two["on_gpu"] and two["returncode"] == 0
                    else f"; 2 processes FAILED: {two['tail']}"),
                 "reference": "" if two else "one GPU visible: no 2-process step",
                 "ratio": None, "target": "exit 0", "met": ddp_ok, "check": tests["summary"]},
                {"measure": "GPU input path (decode: gpu), classifier input, batch 8, VOC-sized JPEGs (nvjpeg)",
                 "pipeline": f"{cls_input['gpu_path_samples_per_s_per_core']:.0f} samples/s per CPU core",
                 "reference": f"{cls_input['cpu_path_samples_per_s_per_core']:.1f} per core with decode cpu",
                 "ratio": cls_input["gpu_path_samples_per_s_per_core"] / cls_input["cpu_path_samples_per_s_per_core"],
                 "target": f"x {INPUT_CORES} cores >= " + (f"{need:.0f}/s" if need else "40% of bf16 peak"),
                 "met": input_met,
                 "check": f"device step {cls_input['gpu_path_device_step_samples_per_s']:.0f} samples/s on the card; "
                          f"L2G input {inputs['l2g']['gpu_path_samples_per_s_per_core']:.0f}/s per core; mean "
                          f"|nvjpeg - libjpeg| {cls_input['mean_grey_level_diff']:.2f} grey levels"},
            ]}
