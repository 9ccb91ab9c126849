"""Saliency maps the pipeline makes, and where a stage's maps came from.

A dataset's `saliency: {source: ...}` (l2g_core.pipeline.SALIENCY_SOURCES) says where the maps
that L2G and the pseudo labels read come from: ROOT/Sal (folder), or results/{dataset}/saliency/,
made by `l2g saliency` (l2g_core/stages/saliency.py) from the stage-1 CAMs (cams, here) or by a
salient-object network (detector, l2g_core/detector.py). Every reader takes `--saliency-dir`
(default ROOT/Sal) and records `maps_record` with its output.

The cams source, with no model beyond the run's own classifier: the foreground evidence of a pixel
is the strongest CAM among the image's classes (class-agnostic: saliency says "object", not which),
optionally raised to `power` (below 1 widens the blobs a CAM leaves on the most discriminative
part). Against a constant background score `threshold` it becomes a probability p = fg / (t + fg),
the per-pixel normalisation the pseudo labels use (l2g_core.crf.scores_to_probs), which a two-label
dense CRF then aligns with the image's edges; the map is the CRF's foreground marginal, 0..255.
"""

from pathlib import Path

import numpy as np

from l2g_core.crf import DEFAULT_CRF_PARAMS, dense_crf, scores_to_probs
from l2g_core.data.layout import SALIENCY_DIR
from l2g_core.io_utils import read_json
from l2g_core.shards import MANIFEST

# The cams source's defaults: the background score and power tuned on the demo's stage-1 CAMs
# against its ground truth (docs/l2g_method.md, "Saliency maps made by the pipeline"); the CRF
# kernels are IRN's, in pixels of VOC-sized images (the demo's section scales them to 128 px).
CAMS_DEFAULTS = {"threshold": 0.4, "power": 1.0, "crf": True, "crf_params": dict(DEFAULT_CRF_PARAMS)}


def add_saliency_dir_argument(parser, reader):
    parser.add_argument("--saliency-dir", default=None,
                        help=f"folder of the saliency maps ID.png (0..255) {reader} reads: default the dataset's "
                             f"ROOT/{SALIENCY_DIR}; results/{{dataset}}/saliency where the pipeline made them")


def foreground_evidence(cams, shape, power=1.0):
    """(H, W) float32: the strongest of the image's CAMs (K, H, W) at each pixel, to `power`;
    zeros for an image without a class."""
    if len(cams) == 0:
        return np.zeros(shape, dtype=np.float32)
    return np.power(np.asarray(cams, dtype=np.float32).max(axis=0), power, dtype=np.float32)


def cams_saliency(image, cams, *, threshold, power=1.0, crf=True, crf_params=None):
    """The 0..255 uint8 saliency map (H, W) of one image (H x W x 3 uint8) from its stage-1 CAMs
    (K, H, W in [0, 1]): the foreground probability fg / (threshold + fg), refined by a two-label
    dense CRF against the image where `crf` (module docstring)."""
    fg = foreground_evidence(cams, image.shape[:2], power)
    probs = scores_to_probs(np.stack([np.full_like(fg, threshold), fg]))
    if crf:
        probs = dense_crf(image, probs, **dict(DEFAULT_CRF_PARAMS, **(crf_params or {})))
    return np.rint(np.clip(probs[1], 0.0, 1.0) * 255.0).astype(np.uint8)


def maps_record(layout):
    """Where a stage's saliency maps came from, for its output's record: the folder and its source;
    for maps the pipeline made, the settings of their manifest (the CAMs or the detector's
    weights file with its size and sha256)."""
    folder = Path(layout.saliency_dir).resolve()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return {"dir": str(folder), "source": "folder"}
    settings = read_json(manifest)["settings"]
    return {"dir": str(folder), **settings}
