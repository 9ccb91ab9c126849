"""CAM files: one `.npz` per image (numpy's compressed zip) holding only the classes present in
the image, at the original image size, with the class indices stored beside them.

    cams     uint8 (K, H, W): each map (ReLU'd, divided by its maximum, in [0, 1]) times 255,
             rounded to the nearest integer, which is what the official L2G code writes as
             ID_{class}.png and reads back as value / 255 (test_l2g_voc.py, gen_gt.py)
    classes  int64 (K,), mask class indices 1..C of the K maps

load_cams returns the maps as float32 value / 255, so every stage downstream sees the official
CAMs exactly (maximum error 1/510 against the unrounded maps). Files of an earlier version, float16
maps, still load.
"""

import zipfile
import zlib
from pathlib import Path

import numpy as np

from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path

SUFFIX = ".npz"


def cam_path(folder, image_id):
    return Path(folder) / f"{image_id}{SUFFIX}"


def quantise(cams):
    """Maps in [0, 1] -> uint8 round(255 x) (ties to even, as OpenCV's conversion rounds)."""
    return np.rint(np.clip(np.asarray(cams, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_cams(path, cams, classes):
    cams = quantise(cams)
    classes = np.asarray(classes, dtype=np.int64)
    if cams.ndim != 3 or len(cams) != len(classes):
        raise ValueError(f"expected (K, H, W) maps for K classes, got {cams.shape} for {classes.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object keeps numpy from appending ".npz" to tmp
            np.savez_compressed(handle, cams=cams, classes=classes)


def load_cams(path):
    """(cams float32 (K, H, W) in [0, 1], classes int64 (K,)) of one image."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: CAM file not found")
    try:
        with np.load(path) as data:
            cams, classes = data["cams"], data["classes"].astype(np.int64)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise L2GError(f"{path}: not a CAM file ({error})") from None
    if cams.dtype == np.uint8:
        return cams.astype(np.float32) / 255.0, classes
    return cams.astype(np.float32), classes


def cams_to_labels(cams, classes, threshold):
    """Class index per pixel: the strongest present class, or background (0) where no CAM
    exceeds `threshold` (ties go to the background)."""
    if len(classes) == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    best = cams.argmax(axis=0)
    labels = np.asarray(classes, dtype=np.uint8)[best]
    labels[cams.max(axis=0) <= threshold] = 0
    return labels


def saliency_as_cams(cams, saliency):
    """CAM-shaped maps whose argmax is the CAM's class and whose peak is `saliency` (H, W): the
    saliency map decides foreground against a threshold, the CAMs only which class it is."""
    if len(cams) == 0:
        return cams
    winner = cams.argmax(axis=0)
    one_hot = np.arange(len(cams))[:, None, None] == winner[None]
    return (one_hot * np.asarray(saliency, dtype=np.float32)[None]).astype(np.float32)
