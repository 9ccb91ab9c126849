"""Item 2: batched multi-scale CAM export (`l2g export-cams`) against one image and one scale (and
its flip) per forward pass with one PNG per class (the official test script's way; bench.reference).

Model: `build_classifier("small", 6)`, random init (timing only), saved as the training stages
save theirs; the demo's export settings: scales 0.5 1.0 1.5 with flip, batch 16, images 128 px.
Check: the CAMs of both sides (pipeline: its files, 1/255 steps; reference: its 8-bit PNGs)
agree within one 1/255 step. No speed target on a CPU: both sides run the same convolutions.
Also reported: bytes written per image in each format, and the 8-bit PNGs' quantisation error;
and, on VOC-sized images (500 x 375), the export with decoding in this process (--workers 0)
against 2 data-loader workers (--workers 2), which must write the same files.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import interleaved, l2g, model_file, ratio, subset_manifest, synthetic_dataset, voc_sized_dataset
from bench.reference import reference_export
from l2g_core.data.manifest import load_manifest, split_ids

TOLERANCE = 1 / 255 + 1e-6  # one quantisation step: a float rounding can tip a value over
SCALES = [0.5, 1.0, 1.5]
BATCH_SIZE = 16


def conv_share(call):
    """One profiled call: its total time and the time inside torch's convolutions (cProfile)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    conv = sum(tt for (_, _, name), (_, _, tt, _, _) in stats.items() if name == "<built-in method torch.conv2d>")
    calls = sum(nc for (_, _, name), (_, nc, _, _, _) in stats.items() if name == "<built-in method torch.conv2d>")
    return {"total_s": pstats.Stats(profiler).total_tt, "conv2d_s": conv, "conv2d_calls": calls}


def run(ctx):
    from l2g_core.cam_io import cam_path, load_cams

    pool, count, size = (12, 4, 48) if ctx.quick else (300, 48, 128)
    manifest_path = subset_manifest(synthetic_dataset(ctx, pool, size), count, ctx.folder("export", "prep"))
    manifest = load_manifest(manifest_path)
    ids = split_ids(manifest, "train")
    labels = json.loads(Path(manifest["labels"]).read_text())
    model = model_file(ctx)
    out_pipe, out_ref = ctx.folder("export", "pipeline"), ctx.folder("export", "reference")

    def pipeline():
        l2g(["export-cams", "--manifest", manifest_path, "--model", model, "--split", "train", "--out", out_pipe,
             "--scales", *SCALES, "--flip", "--batch-size", BATCH_SIZE, "--device", ctx.device])

    def reference(keep_maps=False):
        return reference_export(model, manifest["root"], ids, labels, SCALES, True, out_ref, ctx.device,
                                keep_maps=keep_maps)

    pipeline()
    kept = reference(keep_maps=True)
    max_diff, max_png_error = 0.0, 0.0
    for image_id in ids:
        cams, classes = load_cams(cam_path(out_pipe, image_id))
        ref_classes, ref_maps = kept[image_id]
        if list(classes) != ref_classes:
            max_diff = float("inf")
            continue
        for cam, c, ref_map in zip(cams, ref_classes, ref_maps):
            png = np.asarray(Image.open(out_ref / f"{image_id}_{c - 1}.png"))
            max_diff = max(max_diff, float(np.abs(cam - png / 255.0).max()))
            max_png_error = max(max_png_error, float(np.abs(png / 255.0 - ref_map).max()))
    agree = max_diff <= TOLERANCE

    timing = interleaved({"pipeline": pipeline, "reference": reference}, warmup=ctx.warmup, repeats=ctx.repeats)
    profile = {"pipeline": conv_share(pipeline), "reference": conv_share(reference)}
    pipe_s, ref_s = timing["pipeline"]["median_s"], timing["reference"]["median_s"]
    speedup = ratio(ref_s, pipe_s)
    voc = voc_workers(ctx, model)
    npz_bytes = sum(cam_path(out_pipe, i).stat().st_size for i in ids) / len(ids)
    png_bytes = sum(p.stat().st_size for p in out_ref.glob("*.png")) / len(ids)
    return {
        "item": "export",
        "setup": {"images": len(ids), "size": size, "scales": SCALES, "flip": True, "batch_size": BATCH_SIZE,
                  "model": "small, 6 classes, random init", "device": ctx.device,
                  "pipeline": "l2g export-cams (in process)",
                  "reference": "bench.reference.reference_export (test_l2g_voc.py style)"},
        "agree": agree and voc["same_files"],
        "check": {"max_abs_cam_diff": max_diff, "tolerance": TOLERANCE, "png_quantisation_max_error": max_png_error,
                  "voc_sized_workers_same_files": voc["same_files"]},
        "timing": timing,
        "figures": {"speedup": speedup, "pipeline_images_per_s": len(ids) / pipe_s,
                    "reference_images_per_s": len(ids) / ref_s, "bytes_per_image_npz": npz_bytes,
                    "bytes_per_image_png_per_class": png_bytes, "profile": profile, "voc_sized": voc},
        "rows": [
            {"measure": f"images/s, {len(ids)} images {size} px, scales {SCALES} + flip ({ctx.device})",
             "pipeline": f"{len(ids) / pipe_s:.3g} img/s", "reference": f"{len(ids) / ref_s:.3g} img/s",
             "ratio": speedup, "target": "", "met": None,
             "check": f"max |dCAM| {max_diff:.1e} (<= 1/255)"},
            {"measure": "bytes written per image (compressed uint8 .npz vs 8-bit PNG per class)",
             "pipeline": f"{npz_bytes:,.0f} B", "reference": f"{png_bytes:,.0f} B",
             "ratio": None, "target": "", "met": None,
             "check": f"PNG quantisation error up to {max_png_error:.4f}"},
            {"measure": f"images/s, {voc['images']} VOC-sized images (500x375), 2 loader workers vs decoding "
                        f"in the exporting process ({ctx.device})",
             "pipeline": f"{voc['images_per_s']['workers_2']:.3g} img/s",
             "reference": f"{voc['images_per_s']['workers_0']:.3g} img/s",
             "ratio": voc["speedup"], "target": "", "met": None,
             "check": "same files" if voc["same_files"] else "FILES DIFFER"},
        ],
    }


def voc_workers(ctx, model):
    """Export of VOC-sized images with 0 and with 2 data-loader workers: timing, same files."""
    manifest = voc_sized_dataset(ctx, 4 if ctx.quick else 16)
    count = len(split_ids(load_manifest(manifest), "train"))
    outs = {workers: ctx.folder("export", f"voc_workers_{workers}") for workers in (0, 2)}

    def export(workers):
        return lambda: l2g(["export-cams", "--manifest", manifest, "--model", model, "--split", "train",
                            "--out", outs[workers], "--scales", *SCALES, "--flip", "--batch-size", 4,
                            "--workers", workers, "--device", ctx.device])

    sides = {f"workers_{w}": export(w) for w in outs}
    for side in sides.values():
        side()
    names = sorted(p.name for p in outs[0].glob("*.npz"))
    same = len(names) == count and all((outs[0] / n).read_bytes() == (outs[2] / n).read_bytes() for n in names)
    timing = interleaved(sides, warmup=0, repeats=ctx.repeats)
    seconds = {side: timing[side]["median_s"] for side in sides}
    return {"images": count, "same_files": same, "timing": timing,
            "images_per_s": {side: count / s for side, s in seconds.items()},
            "speedup": ratio(seconds["workers_0"], seconds["workers_2"])}
