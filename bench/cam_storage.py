"""Item: CAM files on VOC-sized images. The format `l2g export-cams` writes (uint8 maps, round(255 x),
compressed .npz; l2g_core/cam_io.py) against the earlier one (float16 maps, uncompressed .npz):
bytes per image, write and read time per image, the largest error against the exact float32 maps,
and the CAM mIoU over the background-threshold sweep from each.

CAMs: the demo's trained L2G model (results/demo/l2g/model.pt; a random `small` model with --quick
or where the demo has not run) on the demo's train images warped to 500 x 375, the demo's export
scales and flips, the present classes only (1 or 2 per image), ground truth resized with nearest.
Targets (issue 15): at least 5x smaller, maximum error 1/255, mIoU unchanged to 0.1 point.
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import interleaved, model_file, ratio, synthetic_dataset
from l2g_core.cam_io import load_cams, save_cams
from l2g_core.cams import model_image_stats, multiscale_cams
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.evaluation import scores, sweep_confusions
from l2g_core.model_io import load_classifier
from l2g_core.stages.evaluate import DEFAULT_THRESHOLDS

VOC_SIZE = (500, 375)  # width, height of a typical VOC image
SCALES, FLIP = [0.5, 1.0, 1.5], True  # the demo's export settings
TARGET_SMALLER, MAX_ERROR, MIOU_POINTS = 5.0, 1 / 255, 0.1


def save_float16(path, cams, classes):
    """The earlier format: float16 maps, uncompressed."""
    with open(path, "wb") as handle:
        np.savez(handle, cams=np.asarray(cams, dtype=np.float16), classes=np.asarray(classes, dtype=np.int64))


def voc_sized_cams(ctx, count):
    """[(id, exact float32 CAMs (K, 375, 500), classes, ground truth (375, 500))] and the model used."""
    trained = Path(ctx.results_dir) / "l2g" / "model.pt"
    model_path = trained if trained.is_file() and not ctx.quick else model_file(ctx)
    manifest = load_manifest(synthetic_dataset(ctx, max(count, 12), 128))
    layout, labels = VOCLayout(manifest["root"]), json.loads(Path(manifest["labels"]).read_text())
    model, state = load_classifier(model_path, class_names=manifest["class_names"])
    model.eval()
    samples = []
    for image_id in split_ids(manifest, "train")[:count]:
        image = np.asarray(Image.fromarray(layout.load_image(image_id)).resize(VOC_SIZE, Image.BICUBIC))
        gt = np.asarray(Image.fromarray(layout.load_mask(image_id)).resize(VOC_SIZE, Image.NEAREST))
        maps = multiscale_cams(model, image[None], SCALES, FLIP, model_image_stats(state))[0].numpy()
        classes = labels[image_id]
        samples.append((image_id, maps[[c - 1 for c in classes]], classes, gt))
    return samples, model_path, manifest


def sweep_miou(samples, stored, manifest):
    """Best mIoU over DEFAULT_THRESHOLDS of the maps `stored[id]` against the ground truth."""
    num_labels = manifest["num_classes"] + 1
    total = sum(sweep_confusions(stored[i], classes, gt, DEFAULT_THRESHOLDS, num_labels)
                for i, _, classes, gt in samples)
    return max(scores(matrix, manifest["class_names"])["miou"] for matrix in total)


def run(ctx):
    torch.manual_seed(0)
    count = 4 if ctx.quick else 48
    samples, model_path, manifest = voc_sized_cams(ctx, count)
    folder = ctx.folder("cam_storage")
    formats = {"uint8_compressed": save_cams, "float16_uncompressed": save_float16}

    def writer(name):
        def write_all():
            for image_id, cams, classes, _ in samples:
                formats[name](folder / f"{name}_{image_id}.npz", cams, classes)
        return write_all

    timing = interleaved({name: writer(name) for name in formats}, warmup=ctx.warmup, repeats=ctx.repeats)
    size = {name: sum((folder / f"{name}_{i}.npz").stat().st_size for i, *_ in samples) / len(samples)
            for name in formats}
    loaded = {name: {i: load_cams(folder / f"{name}_{i}.npz")[0] for i, *_ in samples} for name in formats}
    read = interleaved({name: (lambda n=name: [load_cams(folder / f"{n}_{i}.npz") for i, *_ in samples])
                        for name in formats}, warmup=ctx.warmup, repeats=ctx.repeats)
    error = {name: max(float(np.abs(loaded[name][i] - cams).max()) for i, cams, *_ in samples) for name in formats}
    exact = {i: cams for i, cams, *_ in samples}
    miou = {"float32_exact": sweep_miou(samples, exact, manifest),
            **{name: sweep_miou(samples, loaded[name], manifest) for name in formats}}
    smaller = ratio(size["float16_uncompressed"], size["uint8_compressed"])
    miou_change = 100 * abs(miou["uint8_compressed"] - miou["float32_exact"])
    met = smaller >= TARGET_SMALLER and error["uint8_compressed"] <= MAX_ERROR + 1e-7 and miou_change <= MIOU_POINTS
    per_image = {name: timing[name]["median_s"] / len(samples) for name in formats}
    read_per_image = {name: read[name]["median_s"] / len(samples) for name in formats}
    classes_per_image = np.mean([len(classes) for _, _, classes, _ in samples])
    return {
        "item": "cam_storage",
        "setup": {"images": len(samples), "size": list(VOC_SIZE), "classes_per_image": float(classes_per_image),
                  "model": str(model_path), "scales": SCALES, "flip": FLIP},
        "agree": error["uint8_compressed"] <= 1 / 510 + 1e-6,  # round to nearest: half a level
        "check": {"max_abs_error": error, "miou": miou},
        "timing": {"write": timing, "read": read},
        "figures": {"bytes_per_image": size, "smaller": smaller, "write_s_per_image": per_image,
                    "read_s_per_image": read_per_image, "miou_change_points": miou_change},
        "rows": [
            {"measure": f"CAM file bytes per image, {VOC_SIZE[0]}x{VOC_SIZE[1]}, {classes_per_image:.1f} classes",
             "pipeline": f"{size['uint8_compressed']:,.0f} B (uint8, compressed)",
             "reference": f"{size['float16_uncompressed']:,.0f} B (float16)", "ratio": smaller,
             "target": f">= {TARGET_SMALLER:g}x smaller", "met": met,
             "check": f"max error {error['uint8_compressed']:.5f} (<= 1/255); CAM mIoU "
                      f"{100 * miou['uint8_compressed']:.2f} vs {100 * miou['float32_exact']:.2f} exact"},
            {"measure": "write / read time per image", "pipeline":
                f"{1e3 * per_image['uint8_compressed']:.1f} / {1e3 * read_per_image['uint8_compressed']:.1f} ms",
             "reference": f"{1e3 * per_image['float16_uncompressed']:.1f} / "
                          f"{1e3 * read_per_image['float16_uncompressed']:.1f} ms",
             "ratio": ratio(per_image["float16_uncompressed"], per_image["uint8_compressed"]),
             "target": "", "met": None, "check": "ratio: write time, float16 over uint8"},
        ],
    }
