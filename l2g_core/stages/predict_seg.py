"""`l2g predict-seg`: the logits of a DeepLab model on every image of a split, multi-scale and
flipped, at the network's resolution (the GPU part of the prediction).

The network runs in this process, images of equal size batched; one `--workers` forked process
writes the logits files (l2g_core.logits_io) while the network goes on, at most 2 x workers
images in flight. `l2g label-seg` turns them into labels on the CPU (resized, softmax averaged
over the views, optionally a dense CRF), so a GPU job ends when its network is done.

Outputs in --out: ID.npz and manifest.json last (a shard i/n of n > 1 writes
manifest-shard-i-of-n.json), as the other per-image stages do.
"""

import argparse
from functools import partial
from pathlib import Path

from tqdm import tqdm

from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.inference import image_batches, multiscale_views
from l2g_core.logits_io import logits_path, save_logits
from l2g_core.model_io import load_segmenter
from l2g_core.parallel import bounded_map
from l2g_core.runtime import setup_runtime
from l2g_core.shards import describe_shard, parse_shard, shard_ids, start_output, write_manifest


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--model", required=True, help="DeepLab model file (seg/model.pt)")
    parser.add_argument("--split", default="val", help="split role in the manifest (default val)")
    parser.add_argument("--out", required=True, help="folder receiving ID.npz and manifest.json")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="input scales, e.g. 0.75 1.0 1.25")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="add flipped inputs")
    parser.add_argument("--batch-size", type=int, default=4, help="images of equal size per forward pass")
    parser.add_argument("--workers", type=int, default=1, help="file writer processes (default 1)")
    parser.add_argument("--shard", default=None, metavar="i/n", help="process shard i of n of the image list")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def network_views(model, layout, ids, args, device):
    """(id, [logits (K, h, w) of each view], (H, W)) of every image, copied to the host."""
    for batch_ids, images in image_batches(layout, ids, args.batch_size, device):
        views = [view.cpu().numpy() for view in multiscale_views(model, images, args.scales, args.flip)]
        for index, image_id in enumerate(batch_ids):
            yield image_id, [view[index] for view in views], tuple(images.shape[-2:])


def write_views(item, *, out, flip):
    image_id, views, image_size = item
    path = logits_path(out, image_id)
    save_logits(path, views, image_size, flip)
    return path.name, path.stat().st_size


def run(args):
    if not args.scales or min(args.scales) <= 0:
        raise L2GError("--scales must be positive numbers")
    if args.batch_size < 1 or args.workers < 1:
        raise L2GError("--batch-size and --workers must be at least 1")
    shard = parse_shard(args.shard)
    manifest = load_manifest(args.manifest)
    ids = shard_ids(split_ids(manifest, args.split), shard)
    layout = VOCLayout(manifest["root"])
    model, _ = load_segmenter(args.model, class_names=manifest["class_names"])
    runtime = setup_runtime(args.device)
    model.to(runtime.device).eval()
    print(f"predict-seg {args.model} on {manifest['name']}/{args.split} shard {describe_shard(shard)} "
          f"({len(ids)} images): {runtime.describe()}", flush=True)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    work = partial(write_views, out=str(out), flip=args.flip)
    views = network_views(model, layout, ids, args, runtime.device)
    workers = min(args.workers, max(1, len(ids)))
    files = dict(tqdm(bounded_map(work, views, workers), total=len(ids), desc="predict-seg", unit="img",
                      mininterval=2.0))
    write_manifest(own_manifest, stage="predict-seg", shard=shard, ids=ids, files=files, settings={
        "model": str(Path(args.model).resolve()), "split": args.split, "scales": args.scales, "flip": args.flip,
        "precision": runtime.applied_precision})
    print(f"wrote the logits of {len(ids)} images to {out}")
