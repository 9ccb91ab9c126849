"""Item 10, the GPU check (`python -m bench --gpu`; a CUDA device is required, under 8 minutes).

1. The L2G training step of the voc recipe (its train_l2g section: ResNet-38 + PCM global and
   local networks, batch 3 at 448, 6 crops of 320, the official targets) in fp32 and in bf16
   autocast with channels-last, random weights: seconds per update and the model FLOP
   utilisation (FLOPs counted by bench.loader.training_flops over the device's dense bf16 peak).
2. CAM export of that classifier on VOC-sized images (scales 0.5-2 with flips, batch 4, 4 loader
   workers) in fp32 and bf16: images/s, and the largest difference of the stored maps.
3. No hidden host-device synchronisation: the export's device computation and two training
   updates run under torch.cuda.set_sync_debug_mode("error").
4. `l2g with-gpus --count 1 --ddp -- l2g train-cls --device cuda` on a small synthetic set.
5. The CUDA tests that the CPU test suite skips.
"""

import os
import shlex
import subprocess
import time

import numpy as np
import yaml

from bench.common import BIN, REPO, synthetic_dataset, voc_sized_dataset
from bench.loader import training_flops

PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense bf16 FLOP/s
CUDA_TESTS = ["tests/test_training.py::test_stage1_on_cuda_with_amp",
              "tests/test_export_cams.py::test_bf16_export_is_the_fp32_export_within_tolerance"]


def peak_flops(name):
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def voc_l2g_options():
    """The voc train_l2g section as train-l2g's parsed options (ResNet-38 + PCM, random weights)."""
    import argparse

    from l2g_core.stages import train_l2g
    from l2g_core.workflow_support import cli_flags

    voc = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["voc"]
    section = {k: v for k, v in voc["train_l2g"].items() if k != "start"}
    parser = argparse.ArgumentParser()
    train_l2g.configure(parser)
    return parser.parse_args(["--manifest", "-", "--out", "-", "--backbone", "resnet38", "--pcm",
                              *shlex.split(cli_flags(section))])


def l2g_updates(device, bf16):
    """A function running one L2G update of the voc architecture on random data."""
    import torch

    from l2g_core.l2g import sample_boxes
    from l2g_core.models import build_classifier
    from l2g_core.stages.train_l2g import l2g_losses
    from l2g_core.training import TrainSettings, build_optimizer

    args = voc_l2g_options()
    layout = torch.channels_last if bf16 else torch.contiguous_format
    nets = [build_classifier("resnet38", 20, pcm=True).to(device, memory_format=layout).train() for _ in range(2)]
    optimizer = build_optimizer(nets, TrainSettings(epochs=1, batch_size=args.batch_size, lr=args.lr))
    generator = torch.Generator().manual_seed(0)
    size, count = args.input_size, args.batch_size
    labels = torch.zeros(count, 20, device=device)
    labels[torch.arange(count), torch.tensor([3, 8, 14])[:count]] = 1
    batch = {"image": torch.randn(count, 3, size, size, device=device), "label": labels,
             "saliency": torch.rand(count, 1, size, size, device=device)}
    boxes = sample_boxes(count, args.num_crops, args.crop_size, size, generator,
                         corners=args.crop_layout == "corners")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def update():
        with autocast:
            losses = l2g_losses(nets[0], nets[1], batch, boxes, args, nets[0].stride)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return update, args


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

    torch.cuda.set_sync_debug_mode("error")
    try:
        function()
        return None
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)


def training(ctx, peak):
    flops = training_flops("l2g")
    result = {}
    for name, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        update, args = l2g_updates("cuda", bf16)
        seconds = timed(update, 3 if ctx.quick else 10)
        result[name] = {"s_per_update": seconds, "tflop_per_s": flops * args.batch_size / seconds / 1e12,
                        "mfu": flops * args.batch_size / seconds / peak if peak else None}
        if bf16:
            result["sync_error"] = no_sync_error(lambda: [update() for _ in range(2)])
    return result


def export(ctx):
    import torch

    from l2g_core.data.layout import VOCLayout
    from l2g_core.data.manifest import load_manifest, split_ids
    from l2g_core.models import build_classifier
    from l2g_core.cams import cams_of_inputs, image_cams, scaled_inputs

    manifest = load_manifest(voc_sized_dataset(ctx, 8 if ctx.quick else 32))
    layout, ids = VOCLayout(manifest["root"]), split_ids(manifest, "train")
    labels = {i: [1 + n % 20] for n, i in enumerate(ids)}
    torch.manual_seed(0)
    model = build_classifier("resnet38", 20, pcm=True).cuda().eval()
    scales, result, maps = [0.5, 1.0, 1.5, 2.0], {}, {}
    for name, amp in (("fp32", False), ("bf16", True)):
        run = lambda: list(image_cams(model, layout, ids, labels, scales, True, 4, workers=4, amp=amp))  # noqa: E731
        run()
        start = time.perf_counter()
        maps[name] = run()
        result[f"{name}_images_per_s"] = len(ids) / (time.perf_counter() - start)
    result["max_abs_diff_bf16_fp32"] = max(float(np.abs(a[1] - b[1]).max()) for a, b in zip(maps["fp32"], maps["bf16"]))
    image = np.stack([layout.load_image(ids[0])])
    inputs = [scaled_inputs(image, scale, "imagenet").pin_memory() for scale in scales]
    result["sync_error"] = no_sync_error(lambda: cams_of_inputs(model, inputs, image.shape[1:3], True, True))
    return result


def with_gpus_ddp(ctx):
    manifest = synthetic_dataset(ctx, 16, 64)
    out = ctx.folder("gpu", "with_gpus") / "model.pt"
    command = [str(BIN / "l2g"), "with-gpus", "--count", "1", "--ddp", "--", str(BIN / "l2g"), "train-cls",
               "--manifest", str(manifest), "--out", str(out), "--epochs", "1", "--batch-size", "4",
               "--input-size", "64", "--lr", "0.01", "--device", "cuda"]
    done = subprocess.run(command, capture_output=True, text=True)
    return {"returncode": done.returncode, "on_gpu": "GPU cuda:0" in done.stdout,
            "tail": (done.stdout + done.stderr)[-400:]}


def cuda_tests():
    done = subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-rs", *CUDA_TESTS], capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return {"returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-1] if done.stdout else ""}


def run(ctx):
    import torch

    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    train, cams, ddp, tests = training(ctx, peak), export(ctx), with_gpus_ddp(ctx), cuda_tests()
    fast = train["bf16_channels_last"]
    agree = (train["sync_error"] is None and cams["sync_error"] is None and ddp["returncode"] == 0
             and ddp["on_gpu"] and tests["returncode"] == 0)
    mfu = f"MFU {fast['mfu']:.1%}" if fast["mfu"] else "peak unknown"
    return {"item": "gpu", "setup": {"device": name, "peak_bf16_flop_per_s": peak}, "agree": agree,
            "check": {"train_sync_error": train["sync_error"], "export_sync_error": cams["sync_error"],
                      "with_gpus_ddp": ddp, "cuda_tests": tests},
            "figures": {"training": train, "export": cams},
            "rows": [
                {"measure": f"L2G update, voc architecture, batch 3 at 448 ({name})",
                 "pipeline": f"{fast['s_per_update']:.3f} s bf16 + channels-last",
                 "reference": f"{train['fp32']['s_per_update']:.3f} s fp32",
                 "ratio": train["fp32"]["s_per_update"] / fast["s_per_update"], "target": "", "met": None,
                 "check": f"{fast['tflop_per_s']:.0f} TFLOP/s, {mfu}; sync: {train['sync_error'] or 'none'}"},
                {"measure": "CAM export, ResNet-38, VOC-sized images, scales 0.5-2 + flip",
                 "pipeline": f"{cams['bf16_images_per_s']:.1f} img/s bf16",
                 "reference": f"{cams['fp32_images_per_s']:.1f} img/s fp32",
                 "ratio": cams["bf16_images_per_s"] / cams["fp32_images_per_s"], "target": "", "met": None,
                 "check": f"max |bf16 - fp32| {cams['max_abs_diff_bf16_fp32']:.4f}; "
                          f"sync: {cams['sync_error'] or 'none'}"},
                {"measure": "l2g with-gpus --count 1 --ddp -- l2g train-cls; the CUDA tests",
                 "pipeline": "ran on the GPU" if ddp["on_gpu"] else f"FAILED: {ddp['tail']}",
                 "reference": "", "ratio": None, "target": "", "met": None, "check": tests["summary"]},
            ]}
