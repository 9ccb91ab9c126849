"""Item 8b: the GPU input path (`decode: gpu`) against the CPU path, in samples/s per CPU core.

Item 8 found that one loader worker (one core) makes about 17 classifier samples/s where 40% of
an H100 eats about 160: a 2-GPU box with 8 cores cannot feed its GPUs. With decode gpu a worker
only reads the JPEG's bytes (and the saliency PNG) and draws the sample's random numbers; the
training process decodes the batch with torchvision.io.decode_jpeg on the device and augments it
there with tensor ops (l2g_core/data/gpu_augment.py).

Both inputs of the voc recipe (classifier; L2G with its saliency crop), on VOC-sized images
(500 x 375 JPEGs): short side 512, a 448 crop, the official colour jitter; batches of the
recipe's sizes (classifier 8, L2G 3).

- CPU path: one worker's samples/s (the dataset's __getitem__ in this process, one thread).
- GPU path: CPU seconds per sample = the worker's (read, draw) + the training process's CPU
  time in device_batch (decode and augment: on CUDA the kernel launches, and the waits for the
  device, which spin: an upper bound); samples/s per core = 1 / that. On a machine without CUDA
  the device step runs on the CPU device (one thread), which is what is reported; its CUDA
  figure awaits a GPU (the GPU check measures it: bench/gpu.py).
- agree: the GPU path's samples equal the CPU path's on the CPU device (bit for bit, see
  tests/test_gpu_augment.py); on CUDA, within a grey level on average (nvjpeg's decoding).
"""

import statistics
import time

from bench.common import voc_sized_dataset
from bench.loader import PEAKS, UTILISATION, VOC, samples_per_second, training_flops
from l2g_core.data.manifest import load_manifest

BATCH = {"classifier": 8, "l2g": 3}  # the voc recipe's train_cls and train_l2g batch sizes
CORES_PER_GPU = 4  # a 2-GPU box with 8 cores


def datasets(manifest, decode):
    from l2g_core.data.torch_data import ImageOptions, LabelledImages

    options = ImageOptions(resize="short_crop", short_side=VOC["short_side"], decode=decode)
    return {kind: LabelledImages(manifest, "train", VOC["input_size"], saliency=kind == "l2g", options=options)
            for kind in BATCH}


def raw_batches(dataset, batch, device):
    """The collated raw batches of one epoch, in pinned memory on CUDA as the Trainer's loader
    hands them over."""
    import torch

    batches = [dataset.collate_fn([dataset[i] for i in range(start, start + batch)])
               for start in range(0, len(dataset) - batch + 1, batch)]
    if torch.device(device).type == "cuda":
        for raw in batches:
            raw["encoded"] = [t.pin_memory() for t in raw["encoded"]]
    return batches


def device_seconds(dataset, batch, device, rounds):
    """(wall, this process's CPU) seconds per sample of device_batch over one epoch's batches on
    `device`, medians over `rounds`, after one untimed batch."""
    import torch

    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = raw_batches(dataset, batch, device)
    dataset.device_batch(batches[0], device)
    sync()
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for raw in batches:
            dataset.device_batch(raw, device)
        sync()
        count = len(batches) * batch
        walls.append((time.perf_counter() - wall) / count)
        cpus.append((time.process_time() - cpu) / count)
    return statistics.median(walls), statistics.median(cpus)


def grey_level_difference(cpu_set, gpu_set, batch, device):
    """(max, mean) |GPU path - CPU path| of the first batch's images, in grey levels, and whether
    the saliency maps (L2G) are equal."""
    import torch

    from l2g_core.data.torch_data import STD

    samples = [cpu_set[i] for i in range(batch)]
    made = gpu_set.device_batch(gpu_set.collate_fn([gpu_set[i] for i in range(batch)]), torch.device(device))
    diff = (made["image"].cpu() - torch.stack([s["image"] for s in samples])).abs() * torch.from_numpy(STD).view(3, 1, 1) * 255
    saliency = "saliency" not in made or torch.equal(made["saliency"].cpu(), torch.stack([s["saliency"] for s in samples]))
    return float(diff.max()), float(diff.mean()), saliency


def measure(ctx, device):
    """The figures of both paths for both inputs, the GPU path's device step on `device`."""
    import torch

    count = 8 if ctx.quick else 24  # a multiple of both batch sizes
    manifest = load_manifest(voc_sized_dataset(ctx, count))
    rounds = max(1, ctx.repeats)
    cpu_sets, gpu_sets = datasets(manifest, "cpu"), datasets(manifest, "gpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: one worker is one thread; so is the device step on the CPU
    try:
        figures = {}
        for kind, batch in BATCH.items():
            cpu_worker = 1 / samples_per_second(cpu_sets[kind], rounds)
            gpu_worker = 1 / samples_per_second(gpu_sets[kind], rounds)
            wall, cpu = device_seconds(gpu_sets[kind], batch, device, rounds)
            largest, mean, saliency = grey_level_difference(cpu_sets[kind], gpu_sets[kind], batch, device)
            figures[kind] = {
                "batch": batch, "device": device,
                "cpu_path_samples_per_s_per_core": 1 / cpu_worker,
                "gpu_path_worker_samples_per_s": 1 / gpu_worker,
                "gpu_path_device_step_samples_per_s": 1 / wall,
                "gpu_path_device_step_cpu_s_per_sample": cpu,
                "gpu_path_samples_per_s_per_core": 1 / (gpu_worker + cpu),
                "max_grey_level_diff": largest, "mean_grey_level_diff": mean, "saliency_equal": saliency}
    finally:
        torch.set_num_threads(threads)
    return figures


def run(ctx):
    import torch

    device = "cuda" if torch.cuda.is_available() and ctx.device == "cuda" else "cpu"
    figures = measure(ctx, device)
    rows, agree = [], True
    for kind, f in figures.items():
        need = {gpu: UTILISATION * peak / training_flops(kind) for gpu, peak in PEAKS.items()}
        f["gpu_samples_per_s_at_40pct"] = need
        gpu_rate, cpu_rate = f["gpu_path_samples_per_s_per_core"], f["cpu_path_samples_per_s_per_core"]
        if device == "cpu":  # bit for bit (tests/test_gpu_augment.py); on CUDA nvjpeg decodes
            agree = agree and f["max_grey_level_diff"] == 0 and f["saliency_equal"]
        else:
            agree = agree and f["mean_grey_level_diff"] < 1 and f["saliency_equal"]
        where = ("device step on CUDA (nvjpeg)" if device == "cuda" else
                 "device step on the CPU device, one thread; the CUDA figure awaits a GPU (python -m bench --gpu)")
        rows.append({
            "measure": f"{kind} input, samples/s per CPU core, batch {f['batch']}, VOC-sized images",
            "pipeline": f"{gpu_rate:.1f} decode gpu", "reference": f"{cpu_rate:.1f} decode cpu",
            "ratio": gpu_rate / cpu_rate, "target": "", "met": None,
            "check": f"{where}: worker {f['gpu_path_worker_samples_per_s']:.0f}/s, device step "
                     f"{f['gpu_path_device_step_samples_per_s']:.1f}/s; 40% of an H100 eats "
                     f"{need['H100/H200']:.0f}/s = {need['H100/H200'] / gpu_rate:.1f} cores (decode cpu "
                     f"{need['H100/H200'] / cpu_rate:.1f}); max |gpu - cpu| {f['max_grey_level_diff']:.2f} grey levels"})
    return {"item": "gpu_input",
            "setup": {"device": device, "batch": BATCH, "voc": VOC, "torch_threads": 1,
                      "images": 8 if ctx.quick else 24, "rounds": max(1, ctx.repeats)},
            "agree": agree, "figures": figures, "rows": rows}
