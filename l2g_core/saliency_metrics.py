"""How good saliency maps are, as the salient-object-detection field reports it: mean absolute
error (MAE) and the F-measure (beta^2 = 0.3) at the adaptive threshold, with the maximum F-measure
over the 256 thresholds beside it.

The definitions are those of the `pysodmetrics` package (py_sod_metrics 1.6: MAE, Fmeasure), which
cannot be a dependency here: every release pins numpy < 2.3.5 and scikit-image < 0.26, below this
project's pins. tests/test_saliency.py checks these functions against hand-computed values, and
they were checked against pysodmetrics 1.6.2 on the demo's maps (same numbers).

Per image, against the ground-truth foreground (mask > 0; pixels marked 255 are left out):
    pred      the map / 255, stretched to [0, 1] by its min and max when they differ (pysodmetrics'
              prepare_data, MATLAB's mapminmax)
    mae       mean |pred - foreground|
    f         the F-measure of pred >= min(2 mean(pred), 1): (1 + b2) P R / (b2 P + R), 0 when no
              foreground pixel is predicted
    curve     the F-measure at each threshold t = 255 ... 0 of uint8(pred * 255) >= t
Over a set of images: the means of mae and f, and the maximum over t of the mean curve (max_f).
"""

import numpy as np

BETA2 = 0.3  # beta^2 of the F-measure: precision weighs more than recall (Achanta et al. 2009)


def normalised(saliency, valid):
    """The map's valid pixels as float64 in [0, 1], stretched by their min and max."""
    pred = np.asarray(saliency, dtype=np.float64)[valid] / 255.0
    low, high = (pred.min(), pred.max()) if pred.size else (0.0, 0.0)
    return (pred - low) / (high - low) if high != low else pred


def f_measure(tp, predicted, positives):
    """F-measure(s) from true positives, predicted positives and ground-truth positives (0 where tp is 0)."""
    tp = np.asarray(tp, dtype=np.float64)
    precision = tp / np.maximum(predicted, 1)
    recall = tp / max(positives, 1)
    numerator = (1 + BETA2) * precision * recall
    return np.where(tp > 0, numerator / np.where(tp > 0, BETA2 * precision + recall, 1.0), 0.0)


def image_scores(saliency, mask, ignore_index=255):
    """{mae, f, curve} of one 0..255 map (H, W) against a class mask (H, W; > 0 foreground)."""
    mask = np.asarray(mask)
    if np.shape(saliency) != mask.shape:
        raise ValueError(f"saliency map {np.shape(saliency)} and mask {mask.shape} differ in size")
    valid = mask != ignore_index
    pred, gt = normalised(saliency, valid), mask[valid] > 0
    threshold = min(2 * pred.mean(), 1.0) if pred.size else 1.0
    binary = pred >= threshold
    f = float(f_measure((binary & gt).sum(), binary.sum(), gt.sum()))
    # counts of pixels >= t for t = 255 ... 0, from histograms of the 256 levels (pysodmetrics' cal_pr)
    levels = (pred * 255).astype(np.uint8)
    fg = np.cumsum(np.bincount(levels[gt], minlength=256)[::-1])
    everything = np.cumsum(np.bincount(levels, minlength=256)[::-1])
    mae = float(np.abs(pred - gt).mean()) if pred.size else 0.0
    return {"mae": mae, "f": f, "curve": f_measure(fg, everything, gt.sum())}


class SaliencyScore:
    """The dataset-level scores of a stream of images: add(image_scores(...)) in any order, then
    result(). Only running sums are kept."""

    def __init__(self):
        self.count, self.mae, self.f, self.curve = 0, 0.0, 0.0, np.zeros(256)

    def add(self, scores):
        self.count += 1
        self.mae += scores["mae"]
        self.f += scores["f"]
        self.curve += scores["curve"]

    def result(self):
        if not self.count:
            raise ValueError("no image scored")
        return {"mae": self.mae / self.count, "f_adaptive": self.f / self.count,
                "f_max": float(self.curve.max() / self.count), "num_images": self.count, "beta2": BETA2}
