"""`l2g refine`: pseudo labels from CAMs, refined by a dense CRF (l2g_core.crf).

For each id of a split (or of one shard of it) reads the image and its CAM file (CAMS/ID.npz) and
writes OUT/ID.png, a VOC-palette label map (255 = ignore). Images are processed in parallel by a
pool of forked processes (`--workers`, default all cores; 1 runs in this process).

Background: `--threshold T` (or `--threshold-from metrics.json`, its "best_threshold") is the
constant background score; `--ignore-band LOW HIGH` instead labels with both scores and marks
pixels where they disagree as 255. `--no-crf` gives the plain argmax of the official L2G gen_gt.py.

Shards: `--shard i/n` (1 <= i <= n) takes the strided slice ids[i-1::n] of the split list, so each
shard gets a similar mix of images whatever the order of the list; the n shards together cover
every id exactly once and write the same files, byte for byte, as one unsharded run.

Completion: OUT/manifest.json (shard i/n, n > 1: OUT/manifest-shard-i-of-n.json) is written
last, listing every file with its size and the settings used. A stale manifest is deleted before any work starts
(a shard run also deletes manifest.json, whose files it rewrites; a full run deletes all shard
manifests), so a folder without its manifest is never complete.
"""

import argparse
from functools import partial
from pathlib import Path

from tqdm import tqdm

from l2g_core.cam_io import cam_path, load_cams
from l2g_core.crf import DEFAULT_CRF_PARAMS, add_crf_arguments, crf_params_from_args, labelling_options, refine_labels
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.io_utils import read_json, write_label_png
from l2g_core.parallel import available_cores, parallel_map
from l2g_core.saliency import add_saliency_dir_argument, maps_record
from l2g_core.shards import describe_shard, parse_shard, shard_ids, start_output, write_manifest


def configure(parser):
    parser.add_argument("--manifest", required=True, help="dataset manifest.json (from l2g prepare)")
    parser.add_argument("--split", default="train", help="split of the manifest to label (default train)")
    parser.add_argument("--cams", required=True, help="folder of CAM files ID.npz (from CAM export)")
    parser.add_argument("--out", required=True, help="folder for the label PNGs ID.png and manifest.json")
    background = parser.add_mutually_exclusive_group()
    background.add_argument("--threshold", type=float, help="background score in [0, 1]: background "
                                                            "where no CAM exceeds it")
    background.add_argument("--threshold-from", metavar="METRICS_JSON",
                            help="read the background threshold from this JSON's \"best_threshold\"")
    background.add_argument("--ignore-band", type=float, nargs=2, metavar=("LOW", "HIGH"),
                            help="label with background scores LOW and HIGH; pixels where the two "
                                 "labellings disagree become 255 (ignore)")
    parser.add_argument("--fill-band", action=argparse.BooleanOptionalAction, default=False,
                        help="with --ignore-band and the CRF: label the band without the CRF, then let "
                             "the CRF fill it from the confident labels around it (no 255 left) instead "
                             "of refining both labellings and marking where they disagree")
    parser.add_argument("--background", choices=("cam", "saliency"), default="cam",
                        help="cam: background where no CAM exceeds the threshold (official gen_gt.py); "
                             "saliency: background from the saliency map (--saliency-dir), the CAM names the class")
    add_saliency_dir_argument(parser, "--background saliency")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                        help="refine with the dense CRF; --no-crf writes the plain argmax labels "
                             "(the official L2G gen_gt.py)")
    add_crf_arguments(parser, DEFAULT_CRF_PARAMS, "CRF parameters (defaults of IRN's CAM refinement)")
    parser.add_argument("--workers", type=int, default=available_cores(),
                        help="worker processes (default all cores this process may use; 1 = no pool)")
    parser.add_argument("--shard", metavar="i/n",
                        help="only shard i of n: the ids at positions i-1, i-1+n, i-1+2n, ... of the split")


def read_best_threshold(path):
    metrics = read_json(path, "metrics file not found")
    value = metrics.get("best_threshold") if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise L2GError(f"{path}: no numeric \"best_threshold\"")
    return float(value)


def background_settings(args):
    """(threshold or None, ignore band or None), checked."""
    if args.fill_band and (args.ignore_band is None or not args.crf):
        raise L2GError("--fill-band needs --ignore-band and the CRF (the CRF fills the band)")
    if args.ignore_band is not None:
        low, high = args.ignore_band
        if not 0.0 <= low <= high <= 1.0:
            raise L2GError(f"--ignore-band {low:g} {high:g}: need 0 <= LOW <= HIGH <= 1")
        return None, (low, high)
    if args.threshold_from is not None:
        threshold, origin = read_best_threshold(args.threshold_from), f"{args.threshold_from}: best_threshold"
    elif args.threshold is not None:
        threshold, origin = args.threshold, "--threshold"
    else:
        raise L2GError("give --threshold, --threshold-from or --ignore-band")
    if not 0.0 <= threshold <= 1.0:
        raise L2GError(f"{origin} {threshold:g} is outside [0, 1] (CAMs are in [0, 1])")
    return threshold, None


def label_one(image_id, *, root, saliency_dir, cams_dir, out_dir, num_classes, options, use_saliency):
    """Label one image; return (file name, size in bytes)."""
    layout = VOCLayout(root, saliency_dir)
    image = layout.load_image(image_id)
    saliency = layout.load_saliency(image_id) if use_saliency else None
    path = cam_path(cams_dir, image_id)
    cams, classes = load_cams(path)
    if cams.shape[1:] != image.shape[:2]:
        raise L2GError(f"{path}: CAMs are {cams.shape[2]}x{cams.shape[1]} but the image is "
                       f"{image.shape[1]}x{image.shape[0]}")
    if any(not 1 <= c <= num_classes for c in classes):
        raise L2GError(f"{path}: class indices {classes.tolist()} outside 1..{num_classes}")
    labels = refine_labels(image, cams, classes, saliency=saliency, **options)
    target = Path(out_dir) / f"{image_id}.png"
    write_label_png(target, labels)
    return target.name, target.stat().st_size


def run(args):
    manifest = load_manifest(args.manifest)
    threshold, band = background_settings(args)
    use_saliency = args.background == "saliency"
    if use_saliency and args.threshold_from is not None:
        raise L2GError("--background saliency: --threshold-from gives a CAM threshold; give a saliency "
                       "--threshold or an --ignore-band")
    if args.workers < 1:
        raise L2GError(f"--workers {args.workers}: need at least 1")
    shard = parse_shard(args.shard)  # strided: ids[index-1::count] (l2g_core.shards)
    ids = shard_ids(split_ids(manifest, args.split), shard)
    layout = VOCLayout(manifest["root"], args.saliency_dir)
    for image_id in ids:  # every input is checked before any output is written
        if not cam_path(args.cams, image_id).is_file():
            raise L2GError(f"{cam_path(args.cams, image_id)}: CAM file not found")
        if not layout.image_path(image_id).is_file():
            raise L2GError(f"{layout.image_path(image_id)}: image not found")
        if use_saliency and not layout.saliency_path(image_id).is_file():
            raise L2GError(f"{layout.saliency_path(image_id)}: saliency map not found (--background saliency)")

    out = Path(args.out)
    crf_params = crf_params_from_args(args)
    own_manifest = start_output(out, shard)

    settings = {
        "dataset": manifest["name"], "split": args.split, "cams": str(Path(args.cams).resolve()),
        "threshold": threshold,
        "threshold_from": None if args.threshold_from is None else str(Path(args.threshold_from).resolve()),
        "ignore_band": None if band is None else list(band), "fill_band": args.fill_band, "background": args.background,
        "saliency_maps": maps_record(layout) if use_saliency else None,
        "crf": args.crf, "crf_params": crf_params if args.crf else None,
        "probabilities": "per-pixel scores (background threshold, CAMs) divided by their sum"}
    # The labels are made from the recorded settings, as score-pseudo-labels and the report remake them.
    work = partial(label_one, root=str(layout.root), saliency_dir=str(layout.saliency_dir), cams_dir=str(args.cams),
                   out_dir=str(out),
                   num_classes=manifest["num_classes"], options=labelling_options(settings), use_saliency=use_saliency)
    workers = min(args.workers, max(1, len(ids)))
    bar = partial(tqdm, total=len(ids), desc="refine", unit="img", mininterval=1.0)
    sizes = dict(bar(parallel_map(work, ids, workers, ordered=False)))

    write_manifest(own_manifest, stage="refine", shard=shard, ids=ids, files=sizes, settings=settings)
    print(f"refine: {len(ids)} label maps in {out} (shard {describe_shard(shard)})")
