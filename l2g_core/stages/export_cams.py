"""`l2g export-cams`: multi-scale, flipped CAMs of a trained classifier, one file per image.

The official computation (PengtaoJiang/L2G scripts/test_l2g_voc.py with VOCDatasetMSF_l2g):
each scale s is the image resized to round(s * side) with PIL's bicubic filter, fed with its
mirror image; every CAM channel is resized back to the image size (bicubic), un-mirrored and
averaged over all scales and flips; ReLU comes after the average; each channel is divided by its
maximum (+1e-8) and the present classes' maps are kept. Images of the same size are batched.
The maps are stored as the official code writes them, rounded to 1/255 (l2g_core.cam_io).

Shaped for a GPU: `--workers` data-loader processes decode and rescale the images into pinned
memory while the device computes; only the present classes' maps are copied back (selected on the
device); a background thread compresses and writes the files; `--amp` runs the network in bf16
on CUDA (the maps are resized and averaged in fp32).
"""

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from l2g_core.cam_io import cam_path, save_cams
from l2g_core.data.augment import normalise
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.inference import size_batches
from l2g_core.model_io import load_classifier
from l2g_core.parallel import threaded_map
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
    parser.add_argument("--workers", type=int, default=0,
                        help="data-loader processes decoding and rescaling images (0: in this process)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help="the network in bf16 autocast on CUDA (ignored on the CPU; official: fp32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu")


def scaled_inputs(images, scale, stats):
    """uint8 images (B, H, W, 3) of one size -> normalised (B, 3, h, w) at `scale`, PIL bicubic."""
    height, width = images.shape[1:3]
    size = (int(round(width * scale)), int(round(height * scale)))
    scaled = [np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC)) if scale != 1 else image
              for image in images]
    return torch.from_numpy(np.stack([normalise(image, stats) for image in scaled]))


class ScaledBatches(torch.utils.data.Dataset):
    """One item per batch of equal-size images: their ids, size and, per scale, the normalised
    inputs (B, 3, h, w), made in data-loader workers."""

    def __init__(self, layout, batches, scales, stats):
        self.layout, self.batches, self.scales, self.stats = layout, batches, scales, stats

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        ids = self.batches[index]
        images = np.stack([self.layout.load_image(i) for i in ids])
        return {"ids": ids, "size": images.shape[1:3],
                "inputs": [scaled_inputs(images, scale, self.stats) for scale in self.scales]}


@torch.no_grad()
def cams_of_inputs(model, inputs, size, flip, amp=False):
    """Normalised CAMs (B, C+1, H, W), background last, from the inputs of each scale (B, 3, h, w):
    the mean over scales and flips of the raw CAMs resized to `size` (H, W) (bicubic), then ReLU
    and each map divided by its maximum, as the official test_l2g_voc.py computes them."""
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    total, maps = 0, 0
    for batch in inputs:
        batch = batch.to(device, non_blocking=True)
        count = len(batch)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with autocast:
            raw = model(batch)["cams"]
        cams = F.interpolate(raw.float(), size=tuple(size), mode="bicubic", align_corners=False)
        if flip:
            cams = cams[:count] + cams[count:].flip(-1)
        total = total + cams
        maps += 2 if flip else 1
    cams = F.relu(total / maps)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-8)


def multiscale_cams(model, images, scales, flip, stats="imagenet", amp=False):
    """cams_of_inputs of uint8 images (B, H, W, 3) of one size."""
    return cams_of_inputs(model, [scaled_inputs(images, scale, stats) for scale in scales], images.shape[1:3],
                          flip, amp)


def present_maps(cams, ids, labels):
    """[(id, maps of its present classes (K, H, W) float32, classes)] of a batch of CAMs: the maps
    are picked on the device and copied to the host in one transfer."""
    classes = [labels[image_id] for image_id in ids]
    rows = torch.tensor([b * cams.shape[1] + c - 1 for b, present in enumerate(classes) for c in present],
                        dtype=torch.long).to(cams.device, non_blocking=True)
    picked = cams.flatten(0, 1).index_select(0, rows).cpu().numpy()
    ends = np.cumsum([len(present) for present in classes])[:-1]
    return list(zip(ids, np.split(picked, ends), classes))


def image_cams(model, layout, ids, labels, scales, flip, batch_size, stats="imagenet", workers=0, amp=False):
    """(id, CAMs of the present classes (K, H, W) float32, classes) of every image, batched by size."""
    device = next(model.parameters()).device
    batches = ScaledBatches(layout, list(size_batches(layout, ids, batch_size)), scales, stats)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    for batch in loader:
        cams = cams_of_inputs(model, batch["inputs"], batch["size"], flip, amp)
        yield from present_maps(cams, batch["ids"], labels)


def write_cams(item, out):
    image_id, maps, classes = item
    path = cam_path(out, image_id)
    save_cams(path, maps, classes)
    return path.name, path.stat().st_size


def model_image_stats(state):
    """The normalisation a classifier was trained with (its settings), ImageNet's by default."""
    return state.get("settings", {}).get("image_stats") or "imagenet"


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
    runtime = setup_runtime(args.device)
    model, state = load_classifier(args.model, class_names=manifest["class_names"])
    model.to(runtime.device).eval()
    print(f"export-cams {args.model} on {manifest['name']}/{args.split} shard {describe_shard(shard)} "
          f"({len(ids)} images): {runtime.describe()}", flush=True)
    out = Path(args.out)
    own_manifest = start_output(out, shard)
    cams = image_cams(model, layout, ids, labels, args.scales, args.flip, args.batch_size, model_image_stats(state),
                      args.workers, args.amp)
    written = threaded_map(partial(write_cams, out=out), cams)
    files = dict(tqdm(written, total=len(ids), desc="export-cams", unit="img", mininterval=2.0))
    write_manifest(own_manifest, stage="export-cams", shard=shard, ids=ids, files=files, settings={
        "model": str(Path(args.model).resolve()), "model_stage": state["stage"], "split": args.split,
        "scales": args.scales, "flip": args.flip, "amp": args.amp and runtime.device.type == "cuda"})
    print(f"wrote {len(files)} CAM files to {out}")
