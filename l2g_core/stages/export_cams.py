"""`l2g export-cams`: multi-scale, flipped CAMs of a trained classifier, one file per image.

The CAMs are computed as the official test_l2g_voc.py computes them (l2g_core.cams: the images
decoded in `--workers` data-loader processes, in the `--precision` asked for) and stored as the
official code writes them, rounded to 1/255 (l2g_core.cam_io), by a background thread so that
the device never waits on the disk.
"""

import argparse
import json
from functools import partial
from pathlib import Path

from tqdm import tqdm

from l2g_core.cam_io import cam_path, save_cams
from l2g_core.cams import image_cams, model_image_stats
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.model_io import load_classifier
from l2g_core.parallel import threaded_map
from l2g_core.runtime import PRECISIONS, setup_runtime
from l2g_core.shards import describe_shard, parse_shard, shard_ids, start_output, write_manifest


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--model", required=True, help="classifier file (cls/model.pt or l2g/model.pt)")
    parser.add_argument("--split", default="train", help="split role in the manifest (default train)")
    parser.add_argument("--out", required=True, help="folder receiving ID.npz and manifest.json")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, e.g. 0.5 1.0 1.5 2.0")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="add horizontally flipped inputs")
    parser.add_argument("--batch-size", type=int, default=8, help="images of equal size per forward pass")
    parser.add_argument("--shard", default=None, help="process shard i of n of the image list (i/n)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data-loader processes decoding and rescaling images (0: in this process)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default, official): TF32 off; tf32: TF32 on; bf16: bf16 autocast on CUDA. "
                             "The CPU computes fp32 whatever this says")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def write_cams(item, out):
    image_id, maps, classes = item
    path = cam_path(out, image_id)
    save_cams(path, maps, classes)
    return path.name, path.stat().st_size


def run(args):
    if not args.scales or min(args.scales) <= 0:
        raise L2GError("--scales must be positive numbers")
    if args.batch_size < 1 or args.workers < 0:
        raise L2GError("--batch-size must be at least 1 and --workers at least 0")
    shard = parse_shard(args.shard)
    manifest = load_manifest(args.manifest)
    labels = json.loads(Path(manifest["labels"]).read_text())
    ids = shard_ids(split_ids(manifest, args.split), shard)
    layout = VOCLayout(manifest["root"])
    # many image sizes and scales: cudnn.benchmark stays off (fixed_shapes=False)
    runtime = setup_runtime(args.device, precision=args.precision)
    model, state = load_classifier(args.model, class_names=manifest["class_names"])
    model.to(runtime.device).eval()
    print(f"export-cams {args.model} on {manifest['name']}/{args.split} shard {describe_shard(shard)} "
          f"({len(ids)} images): {runtime.describe()}", flush=True)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    cams = image_cams(model, layout, ids, labels, args.scales, args.flip, args.batch_size, model_image_stats(state),
                      args.workers, runtime.autocast_bf16)
    written = threaded_map(partial(write_cams, out=out), cams)
    files = dict(tqdm(written, total=len(ids), desc="export-cams", unit="img", mininterval=2.0))
    write_manifest(own_manifest, stage="export-cams", shard=shard, ids=ids, files=files, settings={
        "model": str(Path(args.model).resolve()), "model_stage": state["stage"], "split": args.split,
        "scales": args.scales, "flip": args.flip, "precision": args.precision,
        "precision_applied": runtime.applied_precision})
    print(f"wrote {len(files)} CAM files to {out}")
