"""`l2g evaluate`: mIoU of predictions against the ground truth of a prepared split.

Predictions in --pred DIR are either label maps DIR/ID.png (single channel, palette or L, 255 =
no prediction) or CAM files DIR/ID.npz (l2g_core.cam_io), which are scored at every background
threshold of --thresholds in one pass (or at one --threshold). Every id of the split needs one.

Outputs (each written atomically and rewritten on every run, the JSON last):
    OUT.json        kind, split, num_images, num_pixels, miou, per_class_iou, precision, recall,
                    pixel_accuracy, class_names; for CAMs at the best threshold, plus
                    best_threshold, best_at_edge ("low" or "high" when the best is the sweep's
                    lowest or highest threshold, so the range may cut off the true best; else
                    null) and sweep [{threshold, miou}, ...]; expectations: the verdicts of
                    --expect on this score (l2g_core.expectations)
    OUT.csv         class, iou, precision, recall (one row per class, background first)
    OUT_sweep.csv   threshold, miou (CAMs only)
"""

import math
from pathlib import Path

import numpy as np

from l2g_core.cam_io import SUFFIX as CAM_SUFFIX
from l2g_core.cam_io import load_cams
from l2g_core.data.layout import IGNORE_INDEX, VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.evaluation import accumulate, confusion, label_names, scores, sweep_confusions
from l2g_core.expectations import add_options, judge_own, report
from l2g_core.io_utils import write_json, write_text
from l2g_core.parallel import available_cores
from l2g_core.scoring import check_all_present, csv_text, load_png, size_error

PNG_SUFFIX = ".png"
# Weak CAMs on real photographs can peak at 0.6 and above: the sweep reaches 0.95 by default.
DEFAULT_THRESHOLDS = [round(float(t), 2) for t in np.arange(0.05, 0.951, 0.05)]


def configure(parser):
    parser.add_argument("--manifest", required=True, help="manifest.json of the prepared dataset")
    parser.add_argument("--split", required=True, help="split role of the manifest to evaluate (train, val, train_subset)")
    parser.add_argument("--pred", required=True, help="folder of predictions: ID.png label maps or ID.npz CAMs")
    parser.add_argument("--out", required=True, help="metrics JSON to write; the CSV views go beside it")
    parser.add_argument("--kind", choices=("auto", "png", "cam"), default="auto",
                        help="prediction kind (default auto: by the files in --pred)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                       help="CAMs: background thresholds to sweep (default 0.05 0.10 ... 0.95)")
    group.add_argument("--threshold", type=float, metavar="T",
                       help="CAMs: evaluate at this one background threshold instead of a sweep")
    parser.add_argument("--workers", type=int, default=available_cores(), help="threads reading files")
    add_options(parser, "cams, cams_train_subset, ...")


def choose_kind(kind, pred_dir, first_id):
    if not pred_dir.is_dir():
        raise L2GError(f"{pred_dir}: prediction folder does not exist")
    if kind != "auto":
        return kind
    has_png = any(pred_dir.glob(f"*{PNG_SUFFIX}"))
    has_cam = any(pred_dir.glob(f"*{CAM_SUFFIX}"))
    if has_png and has_cam:  # both kinds present: go by the first image of the split
        png, cam = (pred_dir / f"{first_id}{s}" for s in (PNG_SUFFIX, CAM_SUFFIX))
        if png.is_file() != cam.is_file():
            return "png" if png.is_file() else "cam"
        raise L2GError(f"{pred_dir}: holds both {PNG_SUFFIX} and {CAM_SUFFIX} predictions; pass --kind png or cam")
    if not (has_png or has_cam):
        raise L2GError(f"{pred_dir}: no predictions ({PNG_SUFFIX} label maps or {CAM_SUFFIX} CAMs)")
    return "png" if has_png else "cam"


def check_thresholds(args, kind):
    if kind == "png":
        if args.threshold is not None or args.thresholds is not None:
            raise L2GError("--threshold/--thresholds apply to CAM predictions only, not PNG label maps")
        return None
    thresholds = [args.threshold] if args.threshold is not None else args.thresholds or DEFAULT_THRESHOLDS
    for t in thresholds:
        if not (math.isfinite(t) and 0.0 <= t <= 1.0):
            raise L2GError(f"threshold {t} is outside 0..1")
    return sorted(set(thresholds))


def check_values(array, num_labels, path, what):
    bad = (array >= num_labels) & (array != IGNORE_INDEX)
    if bad.any():
        raise L2GError(f"{path}: {what} value {int(array[bad][0])} is outside 0..{num_labels - 1} "
                       f"and not {IGNORE_INDEX}")


def image_scorer(layout, pred_dir, kind, thresholds, num_labels):
    """compute(id) -> the image's confusion matrix (PNG) or its sweep of matrices (CAM)."""

    def load_gt(image_id):
        gt = layout.load_mask(image_id)
        check_values(gt, num_labels, layout.mask_path(image_id), "ground-truth")
        return gt

    def score_png(image_id):
        gt = load_gt(image_id)
        path = pred_dir / f"{image_id}{PNG_SUFFIX}"
        pred = load_png(path)
        if pred.shape != gt.shape:
            raise size_error(path, pred.shape, layout.mask_path(image_id), gt.shape)
        check_values(pred, num_labels, path, "prediction")
        return confusion(gt, pred, num_labels)

    def score_cam(image_id):
        gt = load_gt(image_id)
        path = pred_dir / f"{image_id}{CAM_SUFFIX}"
        cams, classes = load_cams(path)
        if cams.ndim != 3 or len(cams) != len(classes):
            raise L2GError(f"{path}: CAMs of shape {cams.shape} do not match {len(classes)} classes")
        if cams.shape[1:] != gt.shape:
            raise size_error(path, cams.shape[1:], layout.mask_path(image_id), gt.shape)
        if classes.size and (classes.min() < 1 or classes.max() >= num_labels):
            raise L2GError(f"{path}: CAM classes {classes.tolist()} are outside 1..{num_labels - 1}")
        return sweep_confusions(cams, classes, gt, thresholds, num_labels)

    return score_png if kind == "png" else score_cam


def sweep_edge(best, thresholds):
    """"low" or "high" when the best threshold is an end of a sweep of several, else None."""
    if len(thresholds) < 2:
        return None
    return "low" if best == thresholds[0] else "high" if best == thresholds[-1] else None


def _or(value, default):
    return default if value is None else value


def run(args):
    manifest = load_manifest(args.manifest)
    ids = split_ids(manifest, args.split)
    if not ids:
        raise L2GError(f"{manifest['splits'][args.split]['list']}: split {args.split} has no images")
    layout = VOCLayout(manifest["root"])
    names = label_names(manifest["class_names"], manifest["num_classes"] + 1)
    num_labels = len(names)
    pred_dir = Path(args.pred)
    kind = choose_kind(args.kind, pred_dir, ids[0])
    thresholds = check_thresholds(args, kind)
    suffix = PNG_SUFFIX if kind == "png" else CAM_SUFFIX
    check_all_present([pred_dir / f"{i}{suffix}" for i in ids], "prediction", args.split)
    check_all_present([layout.mask_path(i) for i in ids], "ground truth", args.split)

    total = accumulate(image_scorer(layout, pred_dir, kind, thresholds, num_labels), ids,
                       workers=args.workers, desc=f"evaluate {args.split}")
    if kind == "png":
        best, best_threshold, sweep = scores(total, names), None, None
    else:
        sweep_scores = [scores(matrix, names) for matrix in total]
        sweep = [{"threshold": t, "miou": s["miou"]} for t, s in zip(thresholds, sweep_scores)]
        best_index = max(range(len(thresholds)), key=lambda j: (_or(sweep_scores[j]["miou"], -1.0), -j))
        best, best_threshold = sweep_scores[best_index], thresholds[best_index]
    if best["num_pixels"] == 0:
        raise L2GError(f"split {args.split}: the ground truth has no labelled pixels (all {IGNORE_INDEX})")

    metrics = {"kind": kind, "split": args.split, "num_images": len(ids), "num_pixels": best["num_pixels"],
               "miou": best["miou"], "per_class_iou": best["per_class_iou"], "precision": best["precision"],
               "recall": best["recall"], "pixel_accuracy": best["pixel_accuracy"], "class_names": names}
    out = Path(args.out)
    write_text(out.with_suffix(".csv"), csv_text(
        ["class", "iou", "precision", "recall"],
        [[n, best["per_class_iou"][n], best["precision"][n], best["recall"][n]] for n in names]))
    if sweep is not None:
        metrics["best_threshold"] = best_threshold
        metrics["best_at_edge"] = sweep_edge(best_threshold, thresholds)
        metrics["sweep"] = sweep
        write_text(out.with_name(f"{out.stem}_sweep.csv"), csv_text(
            ["threshold", "miou"], [[s["threshold"], s["miou"]] for s in sweep]))
    metrics["expectations"] = judge_own(args, metrics)
    write_json(out, metrics)
    at = f" at threshold {best_threshold:g}" if sweep is not None else ""
    print(f"{manifest['name']} {args.split}: mIoU {best['miou']:.4f}{at} over {len(ids)} images ({kind})")
    if sweep is not None and metrics["best_at_edge"]:
        print(f"warning: the best threshold {best_threshold:g} is the {metrics['best_at_edge']} end of the sweep "
              f"{thresholds[0]:g}..{thresholds[-1]:g}; the best may lie beyond it (widen --thresholds)")
    report(metrics["expectations"], args.strict_expectations)
