"""Item 1: the streaming single-pass threshold-sweep evaluator (`l2g evaluate`) against the
official style (per threshold, per image, per class PNG read and argmax; bench.reference).

Both sides score the same test CAMs (made from the ground truth plus noise, bench.common) over the
pipeline's default thresholds 0.05 ... 0.95: the pipeline from its .npz files, the
reference from one 8-bit PNG per class holding the same values. Check: the mIoU at every threshold
agrees to 1e-9. Target: the pipeline on 1 worker at least 5x faster than the reference.
"""

import json
from pathlib import Path

from bench.common import interleaved, l2g, ratio, synthetic_dataset, write_gt_cams
from bench.reference import reference_evaluate, write_label_list
from l2g_core.data.manifest import load_manifest, split_ids

TARGET_SPEEDUP = 5.0
TOLERANCE = 1e-9


def run(ctx):
    from l2g_core.stages.evaluate import DEFAULT_THRESHOLDS

    num_images, size = (12, 48) if ctx.quick else (300, 128)
    thresholds = list(DEFAULT_THRESHOLDS)
    manifest_path = synthetic_dataset(ctx, num_images, size)
    manifest = load_manifest(manifest_path)
    ids = split_ids(manifest, "train")
    labels = json.loads(Path(manifest["labels"]).read_text())
    base = ctx.folder("evaluator")
    npz_dir, png_dir = ctx.folder("evaluator", "cams_npz"), ctx.folder("evaluator", "cams_png")
    write_gt_cams(manifest_path, npz_dir, png_dir, thresholds=thresholds)
    label_list = base / "train_cls.txt"
    write_label_list(label_list, ids, labels)
    gt_dir = Path(manifest["root"]) / "SegmentationClassAug"

    def pipeline(workers):
        out = base / f"pipeline_w{workers}" / "miou.json"
        l2g(["evaluate", "--manifest", manifest_path, "--split", "train", "--pred", npz_dir, "--kind", "cam",
             "--out", out, "--workers", workers])
        return json.loads(out.read_text())

    def reference():
        return reference_evaluate(gt_dir, png_dir, label_list, thresholds, manifest["num_classes"],
                                  base / "reference.json")

    # Check before timing: the same mIoU at every threshold, on 1 and 2 workers.
    ref = dict(reference())
    diffs = []
    for workers in (1, 2):
        sweep = {s["threshold"]: s["miou"] for s in pipeline(workers)["sweep"]}
        diffs += [abs(sweep[t] - ref[t]) for t in thresholds]
    max_diff = max(diffs)
    agree = max_diff <= TOLERANCE
    best = max(thresholds, key=lambda t: ref[t])

    timing = interleaved({"pipeline_1_worker": lambda: pipeline(1), "pipeline_2_workers": lambda: pipeline(2),
                          "reference": reference}, warmup=ctx.warmup, repeats=ctx.repeats)
    ref_s = timing["reference"]["median_s"]
    one, two = timing["pipeline_1_worker"]["median_s"], timing["pipeline_2_workers"]["median_s"]
    speedup = ratio(ref_s, one)
    npz_bytes = sum(p.stat().st_size for p in npz_dir.glob("*.npz")) / len(ids)
    png_bytes = sum(p.stat().st_size for p in png_dir.glob("*.png")) / len(ids)
    return {
        "item": "evaluator",
        "setup": {"images": len(ids), "size": size, "thresholds": thresholds,
                  "cams": "ground truth + smooth noise, 8-bit levels (bench.common.write_gt_cams)",
                  "pipeline": "l2g evaluate --kind cam (in process)",
                  "reference": "bench.reference.reference_evaluate (evaluate_mthr_voc.py style)"},
        "agree": agree,
        "check": {"max_abs_miou_diff": max_diff, "tolerance": TOLERANCE, "best_threshold": best,
                  "best_miou": ref[best]},
        "timing": timing,
        "figures": {"speedup_1_worker": speedup, "speedup_2_workers": ratio(ref_s, two),
                    "pipeline_images_per_s_1_worker": len(ids) / one, "reference_images_per_s": len(ids) / ref_s,
                    "cam_bytes_per_image_npz": npz_bytes, "cam_bytes_per_image_png_per_class": png_bytes},
        "rows": [
            {"measure": f"{len(ids)} images x {len(thresholds)} thresholds, 1 worker", "pipeline": f"{one:.3g} s",
             "reference": f"{ref_s:.3g} s", "ratio": speedup, "target": f">= {TARGET_SPEEDUP:g}x",
             "met": speedup >= TARGET_SPEEDUP, "check": f"max |dmIoU| {max_diff:.1e} (<= {TOLERANCE:g})"},
            {"measure": "same, pipeline on 2 workers", "pipeline": f"{two:.3g} s", "reference": f"{ref_s:.3g} s",
             "ratio": ratio(ref_s, two), "target": "", "met": None, "check": ""},
        ],
    }
