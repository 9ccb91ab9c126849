"""`l2g export-cams`: multi-scale, flipped CAMs of a trained classifier, one file per image.

Images of the same size are batched, and each scale runs once for the batch and its mirror
image together. The CAMs of the present classes (image-level labels) are ReLU'd, resized to
the original image size, summed over scales and flips, and divided by their maximum.
"""

import argparse
import json
from pathlib import Path

import torch.nn.functional as F
from tqdm import tqdm

from l2g_core.cam_io import cam_path, save_cams
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.inference import image_batches, multiscale_sum
from l2g_core.model_io import load_classifier
from l2g_core.runtime import setup_runtime
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
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def multiscale_cams(model, images, scales, flip):
    """Summed foreground CAMs (B, C, H, W) of a batch of equal-size images (B, 3, H, W)."""
    return multiscale_sum(lambda batch: F.relu(model(batch)["cams"][:, :-1].float()), images, scales, flip)


def present_cams(summed, classes):
    """The maps of the present classes (mask indices), each divided by its maximum."""
    maps = summed[[c - 1 for c in classes]]
    peak = maps.reshape(len(classes), -1).max(axis=1)[:, None, None] if len(classes) else 0
    return maps / (peak + 1e-5)


def image_cams(model, layout, ids, labels, scales, flip, batch_size, device):
    """(id, CAMs of the present classes (K, H, W), classes) of every image, batched by size."""
    for batch_ids, images in image_batches(layout, ids, batch_size, device):
        summed = multiscale_cams(model, images, scales, flip).cpu().numpy()
        for image_id, maps in zip(batch_ids, summed):
            yield image_id, present_cams(maps, labels[image_id]), labels[image_id]


def run(args):
    if not args.scales or min(args.scales) <= 0:
        raise L2GError("--scales must be positive numbers")
    if args.batch_size < 1:
        raise L2GError("--batch-size must be at least 1")
    shard = parse_shard(args.shard)
    manifest = load_manifest(args.manifest)
    labels = json.loads(Path(manifest["labels"]).read_text())
    ids = shard_ids(split_ids(manifest, args.split), shard)
    layout = VOCLayout(manifest["root"])
    runtime = setup_runtime(args.device)
    model, state = load_classifier(args.model, class_names=manifest["class_names"])
    model.to(runtime.device).eval()
    print(f"export-cams {args.model} on {manifest['name']}/{args.split} shard {describe_shard(shard)} "
          f"({len(ids)} images): {runtime.describe()}", flush=True)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    files = {}
    cams = image_cams(model, layout, ids, labels, args.scales, args.flip, args.batch_size, runtime.device)
    for image_id, maps, classes in tqdm(cams, total=len(ids), desc="export-cams", unit="img", mininterval=2.0):
        path = cam_path(out, image_id)
        save_cams(path, maps, classes)
        files[path.name] = path.stat().st_size
    write_manifest(own_manifest, stage="export-cams", shard=shard, ids=ids, files=files, settings={
        "model": str(Path(args.model).resolve()), "model_stage": state["stage"], "split": args.split,
        "scales": args.scales, "flip": args.flip})
    print(f"wrote {len(files)} CAM files to {out}")
