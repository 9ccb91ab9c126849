"""Shared pieces of the benchmark: the run context, fair timing, datasets and test CAMs.

Timing. `interleaved` runs the sides of a comparison in one process, alternating them (A B, then
B A, ...) so that a slow spell of a shared machine hits both, after `warmup` untimed rounds, and
reports the median of `repeats` timed rounds of each side. Every comparison checks first that both
sides computed the same result (the item modules do that before calling `interleaved`).

Data. Datasets are made by the pipeline's own `l2g make-synthetic` and `l2g prepare` in a scratch
folder. Test CAMs (`write_gt_cams`) are made deterministically from the ground truth plus smooth
noise (not from a trained classifier): each present class's mask, blurred, scaled by a random gain,
plus a smooth noise field and an offset, clipped at 0 and divided by its maximum, then quantised
to 8 bits (k / 255) so that the pipeline's float16 files and the reference's 8-bit PNGs hold the
same values. Levels k within 1e-3 of a background threshold are moved one level up, so that float16
rounding can never move a pixel across a threshold (the two formats then give the same labels).
"""

import contextlib
import gc
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.parallel import available_cores

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Context:
    """What every item gets: mode, scratch folder, repeat counts, device and a dataset cache."""

    quick: bool
    workdir: Path
    warmup: int
    repeats: int
    device: str  # "cpu" or "cuda"
    results_dir: Path  # where the demo's Snakemake benchmark files are (item 6)
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    def log(self, message):
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def folder(self, *parts):
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@contextlib.contextmanager
def quiet():
    """Swallow stdout and stderr of in-process stage calls (tqdm bars, "wrote ..." lines)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


def l2g(argv):
    """Run one `l2g` subcommand in this process, quietly; raise with its output if it fails."""
    from l2g_core.cli import main

    with quiet() as sink:
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"l2g {' '.join(map(str, argv))} failed ({code}):\n{sink.getvalue()[-3000:]}")


def l2g_command():
    """The `l2g` console script beside this Python (as the Snakemake rules call it)."""
    script = BIN / "l2g"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "l2g_core.cli"]


def interleaved(sides, *, warmup, repeats):
    """{name: {"median_s", "times_s"}} of each zero-argument callable in `sides`, plus
    "paired_ratios": for each later side, its time divided by the first side's in the same round
    ({"name/first": [per-round ratios]}), a check on the ratio of medians when the machine is noisy.

    Rounds alternate the order of the sides; `warmup` rounds are run first and discarded.
    """
    names = list(sides)
    times = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            sides[name]()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    result = {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": [round(x, 6) for x in t]}
              for name, t in times.items()}
    first = names[0]
    result["paired_ratios"] = {f"{name}/{first}": [round(a / b, 4) for a, b in zip(times[name], times[first])]
                               for name in names[1:]}
    return result


def synthetic_dataset(ctx, num_train, size, *, num_val=1, seed=0):
    """A prepared synthetic dataset (make-synthetic + prepare); returns its manifest path."""
    key = ("synthetic", num_train, size, num_val, seed)
    if key not in ctx.cache:
        root = ctx.folder(f"synthetic_{num_train}_{size}")
        data, manifest = root / "data", root / "prep" / "manifest.json"
        l2g(["make-synthetic", data, "--train", num_train, "--val", num_val, "--size", size, "--seed", seed,
             "--workers", min(2, os.cpu_count() or 1)])
        l2g(["prepare", "--name", "demo", "--kind", "synthetic", "--root", data, "--split", "train=train",
             "--split", "val=val", "--out", manifest])
        ctx.cache[key] = manifest
    return ctx.cache[key]


VOC_SIZE = (500, 375)  # width, height of a typical PASCAL VOC photograph


def voc_sized_dataset(ctx, count):
    """The first `count` images of a synthetic dataset scaled to VOC's 500 x 375 (images bicubic,
    JPEG quality 90; masks nearest; saliency bilinear) in a VOC folder of their own, with a
    manifest that points at it; returns the manifest path."""
    from PIL import Image

    from l2g_core.data.layout import IMAGE_DIR, MASK_DIR, SALIENCY_DIR, VOCLayout

    key = ("voc_sized", count)
    if key not in ctx.cache:
        source = load_manifest(synthetic_dataset(ctx, max(count, 12), 128))
        layout, root = VOCLayout(source["root"]), ctx.folder(f"voc_sized_{count}", "data")
        for folder in (IMAGE_DIR, MASK_DIR, SALIENCY_DIR):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for image_id in split_ids(source, "train")[:count]:
            Image.open(layout.image_path(image_id)).resize(VOC_SIZE, Image.BICUBIC).save(
                root / IMAGE_DIR / f"{image_id}.jpg", quality=90)
            Image.open(layout.mask_path(image_id)).resize(VOC_SIZE, Image.NEAREST).save(
                root / MASK_DIR / f"{image_id}.png")
            Image.open(layout.saliency_path(image_id)).resize(VOC_SIZE, Image.BILINEAR).save(
                root / SALIENCY_DIR / f"{image_id}.png")
        path = subset_manifest(synthetic_dataset(ctx, max(count, 12), 128), count, root.parent / "prep")
        manifest = json.loads(path.read_text())
        manifest["root"] = str(root)
        path.write_text(json.dumps(manifest, indent=2))
        ctx.cache[key] = path
    return ctx.cache[key]


def subset_manifest(manifest_path, count, out_dir):
    """A copy of a manifest whose train split is the first `count` ids (the data stays shared)."""
    manifest = load_manifest(manifest_path)
    ids = split_ids(manifest, "train")[:count]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.txt").write_text("\n".join(ids) + "\n")
    manifest["splits"]["train"] = dict(manifest["splits"]["train"], list=str(out_dir / "train.txt"),
                                       num_images=len(ids))
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def forbidden_levels(thresholds, margin=1e-3):
    """8-bit levels k whose value k / 255 lies within `margin` of a threshold."""
    return {k for k in range(256) if any(abs(k / 255.0 - t) < margin for t in thresholds)}


def gt_cam_levels(gt, classes, rng, thresholds):
    """(K, H, W) uint8 levels of test CAMs for the present `classes` (module docstring)."""
    from scipy import ndimage

    size = max(gt.shape)
    bad = sorted(forbidden_levels(thresholds))
    remap = np.arange(256)
    remap[bad] = np.asarray(bad) + 1
    maps = []
    for c in classes:
        obj = (gt == c).astype(np.float64)
        blurred = ndimage.gaussian_filter(obj, sigma=0.03 * size + 0.5)
        noise = ndimage.gaussian_filter(rng.standard_normal(gt.shape), sigma=0.05 * size)
        noise /= noise.std() + 1e-12
        cam = blurred * rng.uniform(0.6, 1.0) + 0.15 * noise + rng.uniform(-0.1, 0.1)
        cam = np.clip(cam, 0.0, None)
        peak = cam.max()
        cam = cam / peak if peak > 0 else cam
        maps.append(remap[np.rint(cam * 255.0).astype(np.int64)].astype(np.uint8))
    return np.stack(maps) if maps else np.zeros((0,) + gt.shape, dtype=np.uint8)


def write_gt_cams(manifest_path, npz_dir, png_dir=None, *, thresholds, seed=0):
    """Test CAMs of every train image: pipeline files npz_dir/ID.npz (l2g_core.cam_io) and, with
    png_dir, the reference's one 8-bit PNG per present class, png_dir/ID_{class - 1}.png (the
    official scripts' naming, 0-based class index), holding the same values."""
    from PIL import Image

    from l2g_core.cam_io import cam_path, save_cams
    from l2g_core.data.layout import VOCLayout

    manifest = load_manifest(manifest_path)
    labels = json.loads(Path(manifest["labels"]).read_text())
    layout = VOCLayout(manifest["root"])
    for index, image_id in enumerate(split_ids(manifest, "train")):
        rng = np.random.default_rng([seed, index])
        classes = sorted(labels[image_id])
        levels = gt_cam_levels(layout.load_mask(image_id), classes, rng, thresholds)
        save_cams(cam_path(npz_dir, image_id), levels.astype(np.float32) / 255.0, classes)
        if png_dir is not None:
            for c, level in zip(classes, levels):
                Image.fromarray(level, mode="L").save(Path(png_dir) / f"{image_id}_{c - 1}.png")


def model_file(ctx, num_classes=6, seed=0):
    """A random-init `small` classifier saved as the training stages save theirs (timing only)."""
    path = ctx.workdir / f"model_small_{num_classes}_{seed}.pt"
    if not path.is_file():
        import torch

        from l2g_core.data.classes import SYNTHETIC_CLASSES
        from l2g_core.model_io import save_classifier
        from l2g_core.models import build_classifier

        torch.manual_seed(seed)
        model = build_classifier("small", num_classes)
        save_classifier(path, model, stage="cls", class_names=list(SYNTHETIC_CLASSES[:num_classes]),
                        settings={"note": "random init, for timing"})
    return path


def files_size(paths):
    return sum(Path(p).stat().st_size for p in paths)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info():
    import numpy
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cores": os.cpu_count(), "cores_usable": available_cores(), "cpu": cpu_model(), "memory_gib": memory_gib(),
        "gpu": gpu, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def ratio(slow, fast):
    return slow / fast if fast > 0 else float("inf")
