"""`l2g predict-seg`: full-resolution predictions of a DeepLab model, multi-scale and flipped,
optionally post-processed by a dense CRF (deeplab-pytorch's parameters by default).

The network runs in this process, images of equal size batched; softmax probabilities are
averaged over scales and flips. The CRF and the PNG writing run in `--workers` forked processes
while the network goes on, at most 2 x workers images in flight (memory stays flat).

Outputs in --out: ID.png (the final labels: after the CRF with --crf, else the argmax) and, with
--crf, no_crf/ID.png (the argmax before it, so both can be scored); manifest.json last (a shard
i/n of n > 1 writes manifest-shard-i-of-n.json), as `l2g refine` does.
"""

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from l2g_core.crf import CRF_IMAGES, DEEPLAB_CRF_PARAMS, add_crf_arguments, crf_image, crf_params_from_args, dense_crf
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.inference import image_batches, multiscale_sum
from l2g_core.io_utils import write_label_png
from l2g_core.model_io import load_segmenter
from l2g_core.models.deeplab import CAFFE_BGR_MEAN
from l2g_core.parallel import available_cores, bounded_map
from l2g_core.runtime import setup_runtime
from l2g_core.shards import NO_CRF_DIR, describe_shard, parse_shard, shard_ids, start_output, write_manifest


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--model", required=True, help="DeepLab model file (seg/model.pt)")
    parser.add_argument("--split", default="val", help="split role in the manifest (default val)")
    parser.add_argument("--out", required=True, help="folder receiving ID.png (and no_crf/ID.png) and manifest.json")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, e.g. 0.75 1.0 1.25")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="add flipped inputs")
    parser.add_argument("--batch-size", type=int, default=4, help="images of equal size per forward pass")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                        help="post-process with the dense CRF (the argmax before it goes to no_crf/)")
    add_crf_arguments(parser, DEEPLAB_CRF_PARAMS, "CRF parameters (defaults of deeplab-pytorch)")
    parser.add_argument("--crf-image", choices=CRF_IMAGES, default="rgb",
                        help="the image the CRF's colour kernel compares: rgb, or deeplab_pytorch (its "
                             "mean-subtracted BGR image cast to uint8, as behind the published scores)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="CRF / writer processes")
    parser.add_argument("--shard", default=None, metavar="i/n", help="process shard i of n of the image list")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def write_prediction(item, *, root, out, crf_params, crf_image_kind="rgb"):
    """Label one image from its probabilities (L, H, W); return {file name: bytes} written."""
    image_id, probs = item
    raw = probs.argmax(axis=0).astype(np.uint8)
    written = {}
    if crf_params is not None:
        image = crf_image(VOCLayout(root).load_image(image_id), crf_image_kind, CAFFE_BGR_MEAN)
        final = dense_crf(image, probs, **crf_params).argmax(axis=0).astype(np.uint8)
        written.update(_write(Path(out) / NO_CRF_DIR / f"{image_id}.png", raw, out))
    else:
        final = raw
    written.update(_write(Path(out) / f"{image_id}.png", final, out))
    return written


def _write(path, labels, out):
    write_label_png(path, labels)
    return {str(path.relative_to(out)): path.stat().st_size}


def probabilities(model, layout, ids, args, device):
    """(id, probabilities (L, H, W) float32) of every image, scales and flips averaged."""
    views = len(args.scales) * (2 if args.flip else 1)
    for batch_ids, images in image_batches(layout, ids, args.batch_size, device):
        summed = multiscale_sum(model, images, args.scales, args.flip, post=lambda logits: logits.softmax(dim=1))
        yield from zip(batch_ids, (summed / views).cpu().numpy())


def run(args):
    if not args.scales or min(args.scales) <= 0:
        raise L2GError("--scales must be positive numbers")
    if args.batch_size < 1 or args.workers < 1:
        raise L2GError("--batch-size and --workers must be at least 1")
    crf_params = crf_params_from_args(args) if args.crf else None
    shard = parse_shard(args.shard)
    manifest = load_manifest(args.manifest)
    ids = shard_ids(split_ids(manifest, args.split), shard)
    layout = VOCLayout(manifest["root"])
    model, state = load_segmenter(args.model, class_names=manifest["class_names"])
    runtime = setup_runtime(args.device)
    model.to(runtime.device).eval()
    print(f"predict-seg {args.model} on {manifest['name']}/{args.split} shard {describe_shard(shard)} "
          f"({len(ids)} images): {runtime.describe()}", flush=True)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    work = partial(write_prediction, root=str(layout.root), out=str(out), crf_params=crf_params,
                   crf_image_kind=args.crf_image)
    files = {}
    with tqdm(total=len(ids), desc="predict-seg", unit="img", mininterval=2.0) as bar:
        for written in bounded_map(work, probabilities(model, layout, ids, args, runtime.device),
                                   min(args.workers, max(1, len(ids)))):
            files.update(written)
            bar.update()
    write_manifest(own_manifest, stage="predict-seg", shard=shard, ids=ids, files=files, settings={
        "model": str(Path(args.model).resolve()), "split": args.split, "scales": args.scales, "flip": args.flip,
        "crf": crf_params, "crf_image": args.crf_image if crf_params else None})
    print(f"wrote {len(ids)} predictions to {out}")
