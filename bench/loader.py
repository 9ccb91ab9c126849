"""Item 8: can the data loaders feed a GPU? Samples per second of one data-loader worker for the
three training inputs of the `voc` recipe, on VOC-sized images (500 x 375 JPEGs, with masks and
saliency maps), beside the samples per second one GPU consumes at 40% of its bf16 peak.

Inputs, as the voc section makes them: the classifier's and L2G's (short side 512, a 448 crop,
the official colour jitter; L2G adds the saliency crop) and DeepLab's (scale 0.5-1.5, a 321 crop,
flip). One worker is one process running the dataset's __getitem__ (decoding, augmenting,
normalising), which is what it is timed doing here, in this process.

GPU side: the FLOPs of one training sample counted by torch's FlopCounterMode on the meta device
(no computation): forward and backward of the voc networks, ResNet-38 + PCM at 448 for the
classifier; for L2G that plus the local network on 6 crops of 320 (the targets, ROI align and
losses are a negligible share); DeepLab-v2 ResNet-101 MSC (1, 0.5, 0.75) at 321. Peaks (dense
bf16): A100 312 TFLOP/s, H100/H200 989 TFLOP/s. Workers needed = GPU samples/s / worker samples/s.
"""

import time

from bench.common import voc_sized_dataset
from l2g_core.data.manifest import load_manifest

PEAKS = {"A100": 312e12, "H100/H200": 989e12}
UTILISATION = 0.4
VOC = {"input_size": 448, "short_side": 512, "crop_size": 320, "num_crops": 6, "seg_crop": 321,
       "seg_scales": [0.5, 0.75, 1.0, 1.25, 1.5], "msc": [0.5, 0.75], "classes": 20}


def training_flops(kind):
    """FLOPs of forward + backward of one training sample of the voc recipe (meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from l2g_core.models import build_classifier
    from l2g_core.models.deeplab import build_deeplab

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        if kind == "deeplab":
            model = build_deeplab("resnet101", VOC["classes"] + 1, msc_scales=VOC["msc"])
            outputs = model(torch.zeros(1, 3, VOC["seg_crop"], VOC["seg_crop"]))
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            sum(o.float().sum() for o in outputs).backward()
        else:
            model = build_classifier("resnet38", VOC["classes"], pcm=True)
            model(torch.zeros(1, 3, VOC["input_size"], VOC["input_size"]))["cams"].sum().backward()
            if kind == "l2g":
                local = build_classifier("resnet38", VOC["classes"], pcm=True)
                crops = torch.zeros(VOC["num_crops"], 3, VOC["crop_size"], VOC["crop_size"])
                local(crops)["cams"].sum().backward()
    return counter.get_total_flops()


def datasets(manifest):
    from l2g_core.data.torch_data import ImageOptions, LabelledImages, SegmentationCrops

    options = ImageOptions(resize="short_crop", short_side=VOC["short_side"])
    return {
        "classifier": LabelledImages(manifest, "train", VOC["input_size"], options=options),
        "l2g": LabelledImages(manifest, "train", VOC["input_size"], saliency=True, options=options),
        "deeplab": SegmentationCrops(manifest, "train", VOC["seg_crop"], scales=VOC["seg_scales"]),
    }


def samples_per_second(dataset, rounds):
    """Median over `rounds` passes of one worker's samples per second (every item once a pass)."""
    import statistics

    rates = []
    for epoch in range(rounds):
        dataset.epoch = epoch
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        rates.append(len(dataset) / (time.perf_counter() - start))
    return statistics.median(rates)


def run(ctx):
    count = 4 if ctx.quick else 24
    manifest = load_manifest(voc_sized_dataset(ctx, count))
    rows, figures = [], {}
    for kind, dataset in datasets(manifest).items():
        rate = samples_per_second(dataset, max(1, ctx.repeats))
        flops = training_flops(kind)
        need = {gpu: UTILISATION * peak / flops for gpu, peak in PEAKS.items()}
        figures[kind] = {"worker_samples_per_s": rate, "train_flops_per_sample": flops,
                         "gpu_samples_per_s_at_40pct": need,
                         "workers_needed": {gpu: n / rate for gpu, n in need.items()}}
        rows.append({"measure": f"{kind} input, one worker, {count} VOC-sized images",
                     "pipeline": f"{rate:.1f} samples/s", "reference": "", "ratio": None, "target": "", "met": None,
                     "check": f"{flops / 1e12:.2f} TFLOP per sample; 40% of a GPU eats "
                              + ", ".join(f"{gpu} {n:.1f}/s = {n / rate:.1f} workers" for gpu, n in need.items())})
    return {"item": "loader",
            "setup": {"images": count, "size": "500x375", "voc": VOC, "peaks_flop_per_s": PEAKS,
                      "utilisation": UTILISATION, "rounds": max(1, ctx.repeats)},
            "agree": True, "figures": figures, "rows": rows}
