"""`l2g score-pseudo-labels`: how good the pseudo labels are, beside what they cost.

One pass over the split gives three numbers against the ground truth:
    miou           the written pseudo labels (CRF-refined, or whatever `l2g refine` wrote)
    miou_no_crf    the same CAMs labelled with the same settings (background, threshold or ignore
                   band, read from the labels' manifest.json) without the CRF
    saliency_baseline
                   foreground from the thresholded saliency map, its class from the CAM argmax,
                   at the best of --saliency-thresholds: what the saliency input of L2G gives
                   almost for free (only where the run has saliency maps: --saliency-dir, default
                   ROOT/Sal)
and, from `--cam-scores NAME=METRICS_JSON`, the CAM scores of the classifiers beside them
(`cam_scores`: plain, control, L2G with and without saliency), so one file holds the comparison;
`saliency_maps`: the maps' own score (MAE, F-measure; --saliency-score); `expectations`: the
verdicts of --expect on these scores (l2g_core.expectations).
"""

from pathlib import Path

import numpy as np

from l2g_core.cam_io import cam_path, load_cams, saliency_as_cams
from l2g_core.crf import labelling_options, refine_labels
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.evaluation import accumulate, confusion, label_names, scores, sweep_confusions
from l2g_core.expectations import add_options, judge_own, report
from l2g_core.io_utils import read_json, write_json
from l2g_core.parallel import available_cores
from l2g_core.saliency import add_saliency_dir_argument
from l2g_core.scoring import check_all_present, load_png, size_error, stage_summary
from l2g_core.shards import MANIFEST, read_manifest

SALIENCY_THRESHOLDS = [round(float(t), 2) for t in np.arange(0.05, 0.951, 0.05)]


def configure(parser):
    parser.add_argument("--manifest", required=True, help="manifest.json of the prepared dataset")
    parser.add_argument("--split", default="train", help="split the pseudo labels cover (default train)")
    parser.add_argument("--labels", required=True, help="folder of pseudo labels ID.png (from l2g refine)")
    parser.add_argument("--cams", required=True, help="folder of the CAM files they were made from")
    parser.add_argument("--saliency-thresholds", type=float, nargs="+", default=SALIENCY_THRESHOLDS,
                        help="saliency thresholds swept for the saliency baseline")
    add_saliency_dir_argument(parser, "the saliency baseline (and background saliency)")
    parser.add_argument("--saliency-score", metavar="SCORE_JSON",
                        help="the score of those maps (l2g score-saliency), carried as saliency_maps")
    parser.add_argument("--cam-scores", action="append", default=[], metavar="NAME=METRICS_JSON",
                        help="CAM metrics (l2g evaluate) to report beside the labels (repeatable)")
    parser.add_argument("--out", required=True, help="JSON to write (pseudo_labels/miou.json)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="threads reading files")
    add_options(parser, "pseudo_labels or pseudo_labels_train_subset; NAME_no_crf is its miou_no_crf")


def cam_score(item):
    """'cams=results/demo/cams/miou.json' -> ('cams', {miou, best_threshold})."""
    name, summary = stage_summary(item, "--cam-scores")
    if "miou" not in summary or "best_threshold" not in summary:
        raise L2GError(f"{summary['file']}: no miou or best_threshold; expected CAM metrics of l2g evaluate")
    return name, {"miou": summary["miou"], "best_threshold": summary["best_threshold"]}


def saliency_score(path):
    """The maps' score (MAE, F-measure) and record from score-saliency's file, or None."""
    if path is None:
        return None
    score = read_json(path, "saliency score not found")
    if "mae" not in score or "f_adaptive" not in score:
        raise L2GError(f"{path}: no mae or f_adaptive; expected the score of l2g score-saliency")
    return {key: score[key] for key in ("mae", "f_adaptive", "f_max", "maps")}


def run(args):
    manifest = load_manifest(args.manifest)
    ids = split_ids(manifest, args.split)
    layout = VOCLayout(manifest["root"], args.saliency_dir)
    names = label_names(manifest["class_names"], manifest["num_classes"] + 1)
    num_labels = len(names)
    with_saliency = layout.has_saliency()
    labels_dir, cams_dir = Path(args.labels), Path(args.cams)
    cam_scores = dict(cam_score(item) for item in args.cam_scores)
    maps_score = saliency_score(args.saliency_score)
    settings = read_manifest(labels_dir / MANIFEST)["settings"]
    background = settings.get("background", "cam")
    if background == "saliency" and not with_saliency:
        raise L2GError(f"{labels_dir}: labelled with background from saliency, but the dataset has no saliency maps")
    options = {**labelling_options(settings), "use_crf": False}
    check_all_present([labels_dir / f"{i}.png" for i in ids], "pseudo label", args.split)
    check_all_present([cam_path(cams_dir, i) for i in ids], "CAM file", args.split)

    def score(image_id):
        gt = layout.load_mask(image_id)
        path = labels_dir / f"{image_id}.png"
        written = load_png(path)
        if written.shape != gt.shape:
            raise size_error(path, written.shape, layout.mask_path(image_id), gt.shape)
        cams, classes = load_cams(cam_path(cams_dir, image_id))
        saliency = layout.load_saliency(image_id) if with_saliency else None
        plain = refine_labels(None, cams, classes, saliency=saliency if background == "saliency" else None, **options)
        parts = [confusion(gt, written, num_labels)[None], confusion(gt, plain, num_labels)[None]]
        if with_saliency:
            sal = saliency_as_cams(cams, saliency)
            parts.append(sweep_confusions(sal, classes, gt, args.saliency_thresholds, num_labels))
        return np.concatenate(parts)

    total = accumulate(score, ids, workers=args.workers, desc="score pseudo labels")
    written, no_crf = scores(total[0], names), scores(total[1], names)
    if written["num_pixels"] == 0:
        raise L2GError(f"split {args.split}: the ground truth has no labelled pixels")
    result = {"split": args.split, "num_images": len(ids), "background": background,
              "threshold": settings["threshold"], "ignore_band": settings["ignore_band"],
              "ignored_fraction": float(total[0][:, -1].sum() / max(1, total[0].sum())),
              "miou": written["miou"], "per_class_iou": written["per_class_iou"],
              "pixel_accuracy": written["pixel_accuracy"], "miou_no_crf": no_crf["miou"],
              "per_class_iou_no_crf": no_crf["per_class_iou"], "saliency_baseline": None, "cam_scores": cam_scores,
              "saliency_maps": maps_score}
    if with_saliency:
        sweep = [scores(matrix, names)["miou"] for matrix in total[2:]]
        best = int(np.argmax(sweep))
        result["saliency_baseline"] = {"miou": sweep[best], "best_threshold": args.saliency_thresholds[best],
                                       "sweep": [{"threshold": t, "miou": m}
                                                 for t, m in zip(args.saliency_thresholds, sweep)]}
    result["expectations"] = judge_own(args, result)
    write_json(args.out, result)
    baseline = result["saliency_baseline"]
    print(f"pseudo labels {args.split}: mIoU {written['miou']:.4f} (no CRF {no_crf['miou']:.4f}"
          + (f", saliency baseline {baseline['miou']:.4f})" if baseline else ")")
          + "".join(f"; {name} {summary['miou']:.4f}" for name, summary in cam_scores.items()))
    report(result["expectations"], args.strict_expectations)
