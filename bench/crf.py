"""Item 3: the dense-CRF pseudo-label stage (`l2g refine`): images per second on 1 and 2 worker
processes, and the overhead of the pipeline's CRF step over a bare pydensecrf call.

Inputs: synthetic images (128 px) with test CAMs made from the ground truth plus noise
(bench.common), background threshold 0.3, the default (IRN) CRF parameters.

  * Scaling: `l2g refine --workers 1` and `--workers 2` on the same files; check: byte-identical
    label PNGs. Target: close to linear (here: >= 1.8x the images per second on 2 workers).
  * Overhead: the pipeline's per-image CRF step, `l2g_core.crf.refine_labels` (scores,
    probabilities, unary, CRF, argmax), against a bare pydensecrf call (DenseCRF2D, setUnaryEnergy,
    the two pairwise terms, inference, argmax) given the same unary and image arrays, precomputed.
    Check: identical labels. Target: within 10%.
  * The machine's own scaling at the same time: a pure-CPU job (no I/O) run through the same fork
    pool on 1 and 2 processes, interleaved with the rest, so that a shortfall of the stage can be
    told apart from a machine whose second core is busy with other work. The stage's whole per-image cost on 1 worker
    (reading the JPEG and the CAM file, writing the PNG, the manifest) is reported beside it.
"""

import numpy as np

from bench.common import interleaved, l2g, ratio, subset_manifest, synthetic_dataset, write_gt_cams
from l2g_core.data.manifest import load_manifest, split_ids

THRESHOLD = 0.3
TARGET_SCALING = 1.8
TARGET_OVERHEAD = 0.10


def spin(units):
    """A pure-Python CPU job (one core, no I/O, no memory traffic): a few ms per unit."""
    total = 0
    for i in range(units * 150_000):
        total += i & 7
    return total


def probe(workers, jobs, units):
    """The machine's own scaling: `jobs` spin jobs through the pipeline's fork pool."""
    from l2g_core.parallel import parallel_map

    return sum(parallel_map(spin, [units] * jobs, workers, ordered=False))


def bare_crf_labels(rgb, unary, channel_labels, height, width, params):
    """Bare pydensecrf on precomputed arrays: the label map of the CRF marginals' argmax."""
    import pydensecrf.densecrf as dcrf

    n = unary.shape[0]
    crf = dcrf.DenseCRF2D(width, height, n)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params["pos_xy_std"], compat=params["pos_w"])
    crf.addPairwiseBilateral(sxy=params["bi_xy_std"], srgb=params["bi_rgb_std"], rgbim=rgb, compat=params["bi_w"])
    q = np.array(crf.inference(params["iterations"])).reshape(n, height, width)
    return channel_labels[q.argmax(axis=0)]


def run(ctx):
    from l2g_core.cam_io import cam_path, load_cams
    from l2g_core.crf import DEFAULT_CRF_PARAMS, EPS, cam_scores, refine_labels, scores_to_probs
    from l2g_core.data.layout import VOCLayout
    from l2g_core.stages.evaluate import DEFAULT_THRESHOLDS

    pool, count, size = (12, 6, 48) if ctx.quick else (300, 96, 128)
    manifest_path = subset_manifest(synthetic_dataset(ctx, pool, size), count, ctx.folder("crf", "prep"))
    manifest = load_manifest(manifest_path)
    ids = split_ids(manifest, "train")
    cams_dir = ctx.folder("crf", "cams")
    write_gt_cams(manifest_path, cams_dir, thresholds=DEFAULT_THRESHOLDS)
    outs = {w: ctx.folder("crf", f"labels_w{w}") for w in (1, 2)}

    def stage(workers):
        l2g(["refine", "--manifest", manifest_path, "--split", "train", "--cams", cams_dir, "--out", outs[workers],
             "--threshold", THRESHOLD, "--workers", workers])

    layout = VOCLayout(manifest["root"])
    arrays, bare_inputs = [], []
    params = {k: (int(v) if k == "iterations" else float(v)) for k, v in DEFAULT_CRF_PARAMS.items()}
    for image_id in ids:
        image = layout.load_image(image_id)
        cams, classes = load_cams(cam_path(cams_dir, image_id))
        arrays.append((image, cams, classes))
        scores, channel_labels = cam_scores(cams, classes, THRESHOLD)
        probs = scores_to_probs(scores)
        unary = np.ascontiguousarray(-np.log(np.clip(probs, EPS, 1.0)).reshape(len(probs), -1), dtype=np.float32)
        bare_inputs.append((np.array(image, order="C"), unary, channel_labels, image.shape[0], image.shape[1]))

    def pipeline_step():
        return [refine_labels(image, cams, classes, threshold=THRESHOLD) for image, cams, classes in arrays]

    def bare():
        return [bare_crf_labels(*inputs, params) for inputs in bare_inputs]

    # Checks before timing.
    stage(1)
    stage(2)
    same_files = all((outs[1] / f"{i}.png").read_bytes() == (outs[2] / f"{i}.png").read_bytes() for i in ids)
    same_labels = all(np.array_equal(a, b) for a, b in zip(pipeline_step(), bare()))
    agree = same_files and same_labels

    jobs, units = (2, 1) if ctx.quick else (16, 16)
    timing = interleaved({"refine_1_worker": lambda: stage(1), "refine_2_workers": lambda: stage(2),
                          "crf_step": pipeline_step, "bare_pydensecrf": bare,
                          "probe_1_process": lambda: probe(1, jobs, units),
                          "probe_2_processes": lambda: probe(2, jobs, units)},
                         warmup=ctx.warmup, repeats=ctx.repeats)
    t1, t2 = timing["refine_1_worker"]["median_s"], timing["refine_2_workers"]["median_s"]
    step_s, bare_s = timing["crf_step"]["median_s"], timing["bare_pydensecrf"]["median_s"]
    scaling = ratio(t1, t2)
    machine_scaling = ratio(timing["probe_1_process"]["median_s"], timing["probe_2_processes"]["median_s"])
    overhead = step_s / bare_s - 1.0
    stage_overhead = t1 / bare_s - 1.0
    return {
        "item": "crf",
        "setup": {"images": len(ids), "size": size, "threshold": THRESHOLD, "crf_params": params},
        "agree": agree,
        "check": {"refine_1_and_2_workers_identical_files": same_files,
                  "crf_step_equals_bare_pydensecrf": same_labels},
        "timing": timing,
        "figures": {"images_per_s_1_worker": len(ids) / t1, "images_per_s_2_workers": len(ids) / t2,
                    "scaling_2_workers": scaling, "machine_scaling_2_processes": machine_scaling,
                    "crf_step_overhead": overhead,
                    "stage_overhead_1_worker": stage_overhead,
                    "bare_ms_per_image": 1000 * bare_s / len(ids), "crf_step_ms_per_image": 1000 * step_s / len(ids),
                    "stage_ms_per_image_1_worker": 1000 * t1 / len(ids)},
        "rows": [
            {"measure": f"l2g refine, {len(ids)} images {size} px: 2 workers vs 1",
             "pipeline": f"{len(ids) / t2:.3g} img/s (2)", "reference": f"{len(ids) / t1:.3g} img/s (1)",
             "ratio": scaling, "target": f">= {TARGET_SCALING:g}x (near linear)", "met": scaling >= TARGET_SCALING,
             "check": "identical PNGs" if same_files else "PNGs DIFFER"},
            {"measure": "the machine: a pure-CPU job through the same fork pool, 2 processes vs 1",
             "pipeline": f"{timing['probe_2_processes']['median_s']:.3g} s (2)",
             "reference": f"{timing['probe_1_process']['median_s']:.3g} s (1)", "ratio": machine_scaling,
             "target": "", "met": None, "check": f"refine reaches {100 * scaling / machine_scaling:.0f}% of it"},
            {"measure": "CRF step (refine_labels) vs bare pydensecrf, same arrays",
             "pipeline": f"{1000 * step_s / len(ids):.3g} ms/img",
             "reference": f"{1000 * bare_s / len(ids):.3g} ms/img",
             "ratio": None, "target": f"overhead <= {100 * TARGET_OVERHEAD:g}%",
             "met": overhead <= TARGET_OVERHEAD, "check": f"overhead {100 * overhead:+.1f}%"
             + ("" if same_labels else ", labels DIFFER")},
            {"measure": "whole stage per image on 1 worker (file I/O included) vs bare",
             "pipeline": f"{1000 * t1 / len(ids):.3g} ms/img", "reference": f"{1000 * bare_s / len(ids):.3g} ms/img",
             "ratio": None, "target": "", "met": None, "check": f"overhead {100 * stage_overhead:+.1f}%"},
        ],
    }
