"""`l2g label-seg`: full-resolution labels from the logits of `l2g predict-seg` (the CPU part of
the prediction), optionally post-processed by a dense CRF (deeplab-pytorch's parameters by default).

This process reads each image's logits, resizes every view to the image size, averages their
softmax probabilities (flipped views mirrored back) and hands them to `--workers` forked
processes that run the CRF and write the PNGs, at most 2 x workers images in flight.

Outputs in --out: ID.png (the final labels: after the CRF with --crf, else the argmax) and, with
--crf, no_crf/ID.png (the argmax before it, so both can be scored); manifest.json last (a shard
i/n of n > 1 writes manifest-shard-i-of-n.json). It reads the same shard's manifest of --logits.
"""

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from l2g_core.crf import CRF_IMAGES, DEEPLAB_CRF_PARAMS, add_crf_arguments, crf_image, crf_params_from_args, dense_crf
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.inference import combine_views
from l2g_core.io_utils import write_label_png
from l2g_core.logits_io import load_logits, logits_path
from l2g_core.models.deeplab import CAFFE_BGR_MEAN
from l2g_core.parallel import available_cores, bounded_map
from l2g_core.shards import (NO_CRF_DIR, describe_shard, manifest_name, parse_shard, read_manifest, shard_ids,
                             start_output, write_manifest)


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--logits", required=True, help="folder of logits ID.npz (from l2g predict-seg)")
    parser.add_argument("--split", default="val", help="split role in the manifest (default val)")
    parser.add_argument("--out", required=True, help="folder receiving ID.png (and no_crf/ID.png) and manifest.json")
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                        help="post-process with the dense CRF (the argmax before it goes to no_crf/)")
    add_crf_arguments(parser, DEEPLAB_CRF_PARAMS, "CRF parameters (defaults of deeplab-pytorch)")
    parser.add_argument("--crf-image", choices=CRF_IMAGES, default="rgb",
                        help="the image the CRF's colour kernel compares: rgb, or deeplab_pytorch (its "
                             "mean-subtracted BGR image cast to uint8, as behind the published scores)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="CRF / writer processes")
    parser.add_argument("--shard", default=None, metavar="i/n", help="process shard i of n of the image list")


def probabilities(folder, ids):
    """(id, probabilities (L, H, W) float32) of every image: the views' softmax averaged."""
    for image_id in ids:
        views, image_size, flip = load_logits(logits_path(folder, image_id))
        summed = combine_views([torch.from_numpy(view)[None] for view in views], image_size, flip,
                               post=lambda logits: logits.softmax(dim=1))
        yield image_id, (summed[0] / len(views)).numpy()


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


def network_settings(folder, shard, split, ids):
    """The settings of the logits folder's (shard) manifest, checked to cover exactly `ids`."""
    path = Path(folder) / manifest_name(shard)
    logits = read_manifest(path)
    if logits.get("stage") != "predict-seg" or logits["ids"] != ids:
        raise L2GError(f"{path}: not the logits of shard {describe_shard(shard)} of split {split}; rerun predict-seg")
    return logits["settings"]


def run(args):
    if args.workers < 1:
        raise L2GError("--workers must be at least 1")
    crf_params = crf_params_from_args(args) if args.crf else None
    shard = parse_shard(args.shard)
    manifest = load_manifest(args.manifest)
    ids = shard_ids(split_ids(manifest, args.split), shard)
    network = network_settings(args.logits, shard, args.split, ids)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    work = partial(write_prediction, root=str(manifest["root"]), out=str(out), crf_params=crf_params,
                   crf_image_kind=args.crf_image)
    torch.set_num_threads(1)  # the workers have the other cores
    files = {}
    with tqdm(total=len(ids), desc="label-seg", unit="img", mininterval=2.0) as bar:
        for written in bounded_map(work, probabilities(args.logits, ids), min(args.workers, max(1, len(ids)))):
            files.update(written)
            bar.update()
    write_manifest(own_manifest, stage="label-seg", shard=shard, ids=ids, files=files, settings={
        **network, "logits": str(Path(args.logits).resolve()), "crf": crf_params,
        "crf_image": args.crf_image if crf_params else None})
    print(f"wrote {len(ids)} predictions to {out}")
