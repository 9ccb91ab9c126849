"""`l2g saliency`: saliency maps made by the pipeline, one OUT/ID.png (0..255) per image of a split.

For a dataset that arrives without ROOT/Sal (the config's `saliency: {source: cams | detector}`,
l2g_core.saliency). L2G and the pseudo labels then read OUT with `--saliency-dir OUT`.

    --source cams      from the stage-1 classifier's CAMs (--cams, the cls_cams folder): the
                       strongest present class against the background score --threshold, refined by
                       a two-label dense CRF against the image (l2g_core.saliency.cams_saliency); CPU,
                       in --workers forked processes
    --source detector  a salient-object network, transparent-background's InSPyReNet, from the
                       weights file --weights (l2g_core.detector), one image at a time on --device

Shards (`--shard i/n`) and completion (OUT/manifest.json, or manifest-shard-i-of-n.json, written
last, listing every file and the settings: for cams the CAM folder and its model, for detector the
weights file's path, size and sha256) as the other per-image stages (l2g_core.shards).
"""

import argparse
from functools import partial
from pathlib import Path

from tqdm import tqdm

from l2g_core import saliency
from l2g_core.cam_io import cam_path, load_cams
from l2g_core.crf import add_crf_arguments, crf_params_from_args
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_gray_png
from l2g_core.parallel import available_cores, parallel_map
from l2g_core.shards import MANIFEST, describe_shard, parse_shard, read_manifest, shard_ids, start_output, \
    write_manifest

SOURCES = ("cams", "detector")  # the sources this stage makes (folder: the dataset brings its maps)


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--split", default="train", help="split role in the manifest (default train)")
    parser.add_argument("--source", choices=SOURCES, required=True, help="what makes the maps")
    parser.add_argument("--out", required=True, help="folder for the maps ID.png and manifest.json")
    parser.add_argument("--shard", metavar="i/n", help="only shard i of n of the split (strided, l2g_core.shards)")
    cams = parser.add_argument_group("source cams")
    cams.add_argument("--cams", help="folder of the stage-1 CAM files ID.npz (results/{dataset}/cls_cams)")
    defaults = saliency.CAMS_DEFAULTS
    cams.add_argument("--threshold", type=float, default=defaults["threshold"],
                      help=f"background score against the CAM maximum, in [0, 1] (default {defaults['threshold']:g})")
    cams.add_argument("--power", type=float, default=defaults["power"],
                      help=f"the CAM maximum to this power first, > 0 (default {defaults['power']:g})")
    cams.add_argument("--crf", action=argparse.BooleanOptionalAction, default=defaults["crf"],
                      help="refine with the dense CRF against the image")
    cams.add_argument("--workers", type=int, default=available_cores(),
                      help="processes computing the CRFs (default all cores this process may use)")
    add_crf_arguments(parser, defaults["crf_params"], "source cams: CRF parameters (pixels of the image)")
    detector = parser.add_argument_group("source detector")
    detector.add_argument("--weights", help="the InSPyReNet weights file (transparent-background's ckpt_base.pth)")
    detector.add_argument("--input-size", type=int, default=1024,
                          help="images resized to this square (1024 for ckpt_base.pth, 384 for ckpt_fast.pth)")
    detector.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def check_args(args):
    """The options of the chosen source, each in one line."""
    if args.source == "cams":
        if args.cams is None:
            raise L2GError("--source cams needs --cams (the stage-1 CAM folder, results/{dataset}/cls_cams)")
        if not 0.0 <= args.threshold <= 1.0:
            raise L2GError(f"--threshold {args.threshold:g}: must be in [0, 1] (CAMs are in [0, 1])")
        if not args.power > 0:
            raise L2GError(f"--power {args.power:g}: must be > 0")
        if args.workers < 1:
            raise L2GError(f"--workers {args.workers}: need at least 1")
    else:
        if args.weights is None:
            raise L2GError("--source detector needs --weights (the config's saliency.weights)")
        if args.input_size < 32:
            raise L2GError(f"--input-size {args.input_size}: need at least 32")


def cams_settings(args):
    """The recorded settings of the cams source: the CAM folder (and its model) and the options."""
    folder = Path(args.cams)
    made_by = read_manifest(folder / MANIFEST)["settings"] if (folder / MANIFEST).is_file() else {}
    return {"source": "cams", "cams": str(folder.resolve()), "cams_model": made_by.get("model"),
            "threshold": args.threshold, "power": args.power, "crf": args.crf,
            "crf_params": crf_params_from_args(args) if args.crf else None}


def cams_map(image_id, *, root, cams_dir, out_dir, settings):
    """Make and write one map from the image's CAMs; return (file name, size in bytes)."""
    image = VOCLayout(root).load_image(image_id)
    path = cam_path(cams_dir, image_id)
    cams, _ = load_cams(path)
    if cams.shape[1:] != image.shape[:2]:
        raise L2GError(f"{path}: CAMs are {cams.shape[2]}x{cams.shape[1]} but the image is "
                       f"{image.shape[1]}x{image.shape[0]}")
    target = Path(out_dir) / f"{image_id}.png"
    write_gray_png(target, saliency.cams_saliency(image, cams, threshold=settings["threshold"],
                                                  power=settings["power"], crf=settings["crf"],
                                                  crf_params=settings["crf_params"]))
    return target.name, target.stat().st_size


def cams_maker(args, layout, ids):
    """make(out) -> ({file: bytes}, settings): the maps of `ids` from the stage-1 CAMs, checked first."""
    missing = [i for i in ids if not cam_path(args.cams, i).is_file()]
    if missing:
        raise L2GError(f"{cam_path(args.cams, missing[0])}: CAM file not found ({len(missing)} of {len(ids)} missing)")
    settings = cams_settings(args)

    def make(out):
        work = partial(cams_map, root=str(layout.root), cams_dir=str(args.cams), out_dir=str(out), settings=settings)
        bar = partial(tqdm, total=len(ids), desc="saliency (cams)", unit="img", mininterval=1.0)
        workers = min(args.workers, max(1, len(ids)))
        return dict(bar(parallel_map(work, ids, workers, ordered=False))), settings
    return make


def detector_maker(args, layout, ids):
    """make(out) -> ({file: bytes}, settings): the maps of `ids` by the detector, its weights loaded first."""
    from l2g_core import detector
    from l2g_core.runtime import setup_runtime

    settings = {"source": "detector", "model": detector.MODEL_CLASS, "package": detector.package_version(),
                "weights": detector.weights_record(args.weights), "input_size": args.input_size}
    runtime = setup_runtime(args.device)
    model = detector.load_detector(args.weights, args.input_size, runtime.device)
    print(f"saliency (detector) {args.weights}: {runtime.describe()}", flush=True)

    def make(out):
        files = {}
        for image_id in tqdm(ids, desc="saliency (detector)", unit="img", mininterval=2.0):
            target = out / f"{image_id}.png"
            write_gray_png(target, detector.predict(model, layout.load_image(image_id), args.input_size,
                                                    runtime.device))
            files[target.name] = target.stat().st_size
        return files, settings
    return make


def run(args):
    check_args(args)
    shard = parse_shard(args.shard)
    manifest = load_manifest(args.manifest)
    ids = shard_ids(split_ids(manifest, args.split), shard)
    layout = VOCLayout(manifest["root"])
    # every input is checked (the CAM files, the weights loaded) before the folder is touched
    make = (cams_maker if args.source == "cams" else detector_maker)(args, layout, ids)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    files, settings = make(out)
    write_manifest(own_manifest, stage="saliency", shard=shard, ids=ids, files=files,
                   settings={"dataset": manifest["name"], "split": args.split, **settings})
    print(f"saliency ({args.source}): {len(ids)} maps in {out} (shard {describe_shard(shard)})")
