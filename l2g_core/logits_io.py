"""DeepLab logits files: what `l2g predict-seg` (the GPU job) hands to `l2g label-seg` (the CPU
job that resizes, averages and CRF-refines them), so that the GPU is free while the CRF runs.

One uncompressed `.npz` per image:

    view_0 ... view_{V-1}  float32 (K, h, w): the network's logits of each view at the network's
                           resolution, in inference.multiscale_views order (scale 1, scale 1
                           mirrored when flipped views are on, scale 2, ...); a mirrored view is
                           stored as the network saw it, mirrored
    image_size             int64 (2,): the image's (H, W), the size the views are resized to
    flip                   bool: whether every other view is mirrored

float32 as the network computed them, so the labels are those of one process doing both. About
0.25 MB per VOC val image and view (21 classes, 63 x 47) and 1.5 MB per COCO image (81 classes):
small beside the images, and kept, so a CRF setting can be changed without the GPU. The folder's
manifest (l2g_core.shards) lists the files and the network settings.
"""

import zipfile
from pathlib import Path

import numpy as np

from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path

SUFFIX = ".npz"


def logits_path(folder, image_id):
    return Path(folder) / f"{image_id}{SUFFIX}"


def save_logits(path, views, image_size, flip):
    arrays = {f"view_{index}": np.asarray(view, dtype=np.float32) for index, view in enumerate(views)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object keeps numpy from appending ".npz" to tmp
            np.savez(handle, image_size=np.asarray(image_size, dtype=np.int64), flip=np.bool_(flip), **arrays)


def load_logits(path):
    """(views: list of float32 (K, h, w), image_size (H, W), flip) of one image."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: logits file not found (rerun predict-seg)")
    try:
        with np.load(path) as data:
            count = sum(name.startswith("view_") for name in data.files)
            views = [data[f"view_{index}"] for index in range(count)]
            image_size, flip = tuple(int(v) for v in data["image_size"]), bool(data["flip"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise L2GError(f"{path}: not a logits file ({error})") from None
    if not views or (flip and count % 2):
        raise L2GError(f"{path}: not a logits file ({count} views{' with flips' if flip else ''})")
    return views, image_size, flip
