"""Dense CRF refinement of CAMs into pseudo labels (pure functions, no file I/O).

From the CAMs of one image (cam_io contract: K maps in [0, 1] for the classes present, class
indices beside them) to a label map of mask class indices:

    cam_scores      background score (a constant map, the background threshold) + the K CAMs
    scores_to_probs per-pixel normalisation of the score vector (see below)
    dense_crf       fully connected CRF (Krähenbühl & Koltun 2011) through pydensecrf
    refine_labels   argmax of the CRF marginals, or of the raw scores (use_crf=False), optionally
                    with an ignore band (IRN-style confident-region labels), which the CRF may
                    instead fill from the confident labels around it (fill_band)

Scores -> probabilities. The score vector of a pixel, s = (t, cam_1, ..., cam_K), is divided by its
sum: p_l = s_l / sum(s). This is what the PSA/IRN family feed to the CRF in spirit (a constant or
CAM-derived background score beside the max-normalised CAMs) made into a proper distribution:
  * it keeps the per-pixel ratios between classes, so the argmax of p is exactly the argmax of the
    scores, i.e. exactly `cam_io.cams_to_labels` (ties go to the background, channel 0). Without
    pairwise terms the CRF therefore reproduces the plain L2G labelling; the CRF only moves labels
    where the image edges and the neighbourhood disagree with a weak margin;
  * it is scale-free: a pixel where every score is small but one class clearly leads is as
    confident as a pixel with large scores in the same ratio, and a pixel with all CAMs at 0 is
    certain background (p_bg = 1). A softmax over scores in [0, 1] would instead be nearly flat
    (at most e:1 between two labels), letting the pairwise terms wash out the CAMs.
Probabilities are clipped to [EPS, 1] before taking -log, so a zero score is a large but finite
unary energy.

CRF defaults (DEFAULT_CRF_PARAMS) are those of IRN (Ahn et al. 2019, `crf_inference_label`), the
de facto standard for CAM refinement in WSSS and also PSA's Gaussian term: 10 mean-field
iterations, Gaussian smoothness kernel (weight 3, 3 px), bilateral appearance kernel (weight 10,
50 px, 5 RGB levels). They are in pixels of the original image, so they suit VOC/COCO-sized
images (~500 px); the narrow colour std keeps labels from crossing visible edges.
"""

import numpy as np

from l2g_core.cam_io import cams_to_labels, saliency_as_cams
from l2g_core.errors import L2GError

EPS = 1e-5

DEFAULT_CRF_PARAMS = {
    "iterations": 10,   # mean-field iterations
    "pos_w": 3.0,       # weight (compat) of the Gaussian (smoothness) kernel
    "pos_xy_std": 3.0,  # spatial std of the Gaussian kernel, pixels
    "bi_w": 10.0,       # weight (compat) of the bilateral (appearance) kernel
    "bi_xy_std": 50.0,  # spatial std of the bilateral kernel, pixels
    "bi_rgb_std": 5.0,  # colour std of the bilateral kernel, RGB levels (0..255)
}


# Post-processing of DeepLab predictions: deeplab-pytorch's values (its configs/*.yaml, CRF).
DEEPLAB_CRF_PARAMS = {"iterations": 10, "pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0,
                      "bi_rgb_std": 3.0}

# (option, key of the parameter dicts, type, help) of the commands that run a CRF.
CRF_OPTIONS = (
    ("--iterations", "iterations", int, "mean-field iterations"),
    ("--pos-w", "pos_w", float, "weight of the Gaussian (smoothness) kernel"),
    ("--pos-xy-std", "pos_xy_std", float, "spatial std of the Gaussian kernel, pixels"),
    ("--bi-w", "bi_w", float, "weight of the bilateral (appearance) kernel"),
    ("--bi-xy-std", "bi_xy_std", float, "spatial std of the bilateral kernel, pixels"),
    ("--bi-rgb-std", "bi_rgb_std", float, "colour std of the bilateral kernel, RGB levels"),
)


def add_crf_arguments(parser, defaults, title):
    group = parser.add_argument_group(title)
    for option, key, kind, text in CRF_OPTIONS:
        group.add_argument(option, dest=key, type=kind, default=defaults[key],
                           help=f"{text} (default {defaults[key]:g})")


def crf_params_from_args(args):
    """The CRF parameters of parsed options, checked (L2GError names the option)."""
    params = {key: getattr(args, key) for _, key, _, _ in CRF_OPTIONS}
    for option, key, _, _ in CRF_OPTIONS:
        value, least = params[key], (0 if key in ("iterations", "pos_w", "bi_w") else 1e-6)
        if not value >= least:  # also refuses NaN
            raise L2GError(f"{option} {value:g}: must be {'>= 0' if least == 0 else '> 0'}")
    return params


def dense_crf(image, probs, *, iterations, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std):
    """Marginals (L, H, W) float32 of a fully connected CRF after mean-field inference.

    image       H x W x 3 uint8 RGB, the image the labels belong to
    probs       (L, H, W) per-pixel label probabilities; unary energy = -log(clip(probs, EPS, 1))
    iterations  number of mean-field iterations
    pos_w       weight of the Gaussian pairwise kernel (penalises label changes between near pixels)
    pos_xy_std  spatial standard deviation of that kernel, pixels
    bi_w        weight of the bilateral pairwise kernel (near pixels of similar colour agree)
    bi_xy_std   spatial standard deviation of the bilateral kernel, pixels
    bi_rgb_std  colour standard deviation of the bilateral kernel, RGB levels
    """
    import pydensecrf.densecrf as dcrf  # imported here so importing this module stays cheap

    probs = np.asarray(probs)
    image = np.asarray(image)
    if probs.ndim != 3:
        raise ValueError(f"expected (L, H, W) probabilities, got shape {probs.shape}")
    labels, height, width = probs.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a {height} x {width} x 3 uint8 image, got {image.shape} {image.dtype}")
    crf = dcrf.DenseCRF2D(width, height, labels)
    unary = -np.log(np.clip(probs, EPS, 1.0)).reshape(labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=float(pos_xy_std), compat=float(pos_w))
    # rgbim: a C-contiguous writable copy (pydensecrf refuses read-only buffers such as PIL arrays)
    crf.addPairwiseBilateral(sxy=float(bi_xy_std), srgb=float(bi_rgb_std),
                             rgbim=np.array(image, order="C"), compat=float(bi_w))
    marginals = crf.inference(int(iterations))
    return np.asarray(marginals, dtype=np.float32).reshape(labels, height, width)


# What the bilateral kernel of the prediction CRF compares: "rgb", the image's colours; or
# "deeplab_pytorch", what deeplab-pytorch's `main.py crf` passes (lines 482 and 492 of its main.py:
# the dataset's mean-subtracted BGR float image cast to uint8, so values below the Caffe mean wrap
# around 256): the computation behind the published CRF scores.
CRF_IMAGES = ("rgb", "deeplab_pytorch")


def crf_image(rgb, kind, caffe_bgr_mean):
    """The H x W x 3 uint8 image the CRF's bilateral kernel sees (CRF_IMAGES)."""
    if kind == "rgb":
        return rgb
    shifted = np.asarray(rgb, dtype=np.float32)[..., ::-1] - np.asarray(caffe_bgr_mean, dtype=np.float32)
    # numpy's float-to-uint8 cast truncates toward zero and wraps on x86-64; written out so the
    # result does not depend on the platform's handling of out-of-range casts
    return (np.trunc(shifted).astype(np.int64) % 256).astype(np.uint8)


def channel_labels_of(classes):
    """The mask index of each score channel: 0 (the background), then `classes`, as uint8."""
    return np.concatenate([[0], np.asarray(classes, dtype=np.int64)]).astype(np.uint8)


def cam_scores(cams, classes, bg_score):
    """Class scores of one image: (scores (K+1, H, W) float32, channel labels (K+1,) uint8).

    Channel 0 is the background, a constant map equal to `bg_score` (the background threshold);
    channels 1..K are the CAMs. `channel_labels[i]` is the mask index of channel i (0, then classes).
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or len(cams) != len(classes):
        raise ValueError(f"expected (K, H, W) maps for K classes, got {cams.shape} for {len(classes)} classes")
    background = np.full((1,) + cams.shape[1:], bg_score, dtype=np.float32)
    return np.concatenate([background, cams]), channel_labels_of(classes)


def scores_to_probs(scores):
    """Per-pixel normalisation p = s / sum(s) of non-negative scores (K+1, H, W) (module docstring).

    A pixel whose scores are all zero (background score 0 and no CAM) gets a uniform vector.
    """
    scores = np.clip(np.asarray(scores, dtype=np.float32), 0.0, None)
    total = scores.sum(axis=0, keepdims=True)
    uniform = np.float32(1.0 / len(scores))
    return np.where(total > 0, scores / np.maximum(total, 1e-12), uniform).astype(np.float32)


def _labelling(image, cams, classes, bg_score, crf_params, use_crf):
    if not use_crf:
        return cams_to_labels(np.asarray(cams, dtype=np.float32), classes, bg_score)
    scores, channel_labels = cam_scores(cams, classes, bg_score)
    if len(channel_labels) == 1:  # no class present: all background, nothing for a CRF to do
        return np.zeros(scores.shape[1:], dtype=np.uint8)
    marginals = dense_crf(image, scores_to_probs(scores), **crf_params)
    return channel_labels[marginals.argmax(axis=0)]  # ties go to channel 0, the background


def evidence_maps(cams, saliency=None):
    """(strict, loose) foreground evidence of each present class, CAM-shaped (K, H, W).

    Without saliency both are the CAMs. With a saliency map (background from saliency), strict
    is the saliency given to the CAM's winning class (foreground where the detector sees an
    object), loose the larger of saliency and CAM peak, so that a pixel the CAM is sure of is
    never confidently background even where the detector missed the object.
    """
    if saliency is None:
        return cams, cams
    strict = saliency_as_cams(cams, saliency)
    peak = cams.max(axis=0) if len(cams) else 0.0
    return strict, saliency_as_cams(cams, np.maximum(saliency, peak))


# Unary probability of a confident label when the CRF fills an ignore band (fill_band).
SEED_CONFIDENCE = 0.7


def fill_band(image, labels, classes, crf_params):
    """Labels for the 255 pixels of `labels` (H, W) from a CRF seeded with the labelled ones.

    A labelled pixel's unary puts SEED_CONFIDENCE on its label and spreads the rest evenly; a 255
    pixel's is uniform, so the pairwise terms decide it from the nearby pixels of similar colour
    (edge-aware propagation of the confident labels); labelled pixels may change too, where the
    image disagrees with them strongly. `classes` are the classes that may appear (0 is added).
    """
    channel_labels = channel_labels_of(classes)
    num = len(channel_labels)
    if num == 1:
        return np.zeros(labels.shape, dtype=np.uint8)
    probs = np.full((num,) + labels.shape, 1.0 / num, dtype=np.float32)
    for channel, label in enumerate(channel_labels):
        seeded = labels == label
        probs[:, seeded] = (1.0 - SEED_CONFIDENCE) / (num - 1)
        probs[channel, seeded] = SEED_CONFIDENCE
    return channel_labels[dense_crf(image, probs, **crf_params).argmax(axis=0)]


def refine_labels(image, cams, classes, *, threshold=None, crf_params=None, use_crf=True, ignore_band=None,
                  saliency=None, fill=False):
    """Pseudo label map (H, W) uint8 of mask class indices (255 = ignore) from one image's CAMs.

    image        H x W x 3 uint8 (only used by the CRF)
    cams         (K, H, W) CAMs in [0, 1]; classes (K,) their mask indices 1..C
    threshold    background score: background wins where no CAM exceeds it
    crf_params   keyword arguments of `dense_crf` (default DEFAULT_CRF_PARAMS; missing keys too)
    use_crf      False: the plain argmax of the official L2G gen_gt.py, exactly
                 `cam_io.cams_to_labels(cams, classes, threshold)`
    ignore_band  (low, high): label the loose evidence with background score `low` (more
                 foreground) and the strict evidence with `high` (more background), keep the label
                 where both agree and mark 255 where they disagree (IRN-style confident regions).
                 Replaces `threshold`, which must then be None.
    saliency     (H, W) in [0, 1], or None: with it the background comes from the saliency map
                 and the CAMs only name the class (`evidence_maps`), as saliency-based WSSS
                 pipelines make their pseudo labels; the thresholds then apply to saliency.
    fill         with an ignore band and the CRF: make the band labels without the CRF and let the
                 CRF fill the band from them (`fill_band`), instead of refining both labellings
    """
    params = dict(DEFAULT_CRF_PARAMS, **(crf_params or {}))
    cams = np.asarray(cams, dtype=np.float32)
    strict, loose = evidence_maps(cams, saliency)
    if ignore_band is None:
        if threshold is None:
            raise ValueError("give a threshold or an ignore band")
        if fill:
            raise ValueError("fill needs an ignore band")
        return _labelling(image, strict, classes, threshold, params, use_crf)
    if threshold is not None:
        raise ValueError("an ignore band replaces the threshold; give one of them")
    low, high = ignore_band
    if low > high:
        raise ValueError(f"ignore band ({low}, {high}): low must not exceed high")
    refine_both = use_crf and not fill
    loose_labels = _labelling(image, loose, classes, low, params, refine_both)
    strict_labels = _labelling(image, strict, classes, high, params, refine_both)
    labels = loose_labels.copy()
    labels[loose_labels != strict_labels] = 255
    return fill_band(image, labels, classes, params) if use_crf and fill else labels


def labelling_options(settings):
    """The refine_labels options of the settings a labels folder's manifest records."""
    band = settings["ignore_band"]
    return {"threshold": settings["threshold"], "ignore_band": tuple(band) if band else None,
            "use_crf": settings["crf"], "crf_params": settings["crf_params"], "fill": settings.get("fill_band", False)}
