"""Segmentation metrics: confusion matrices, IoU scores, a single-pass background-threshold sweep
over CAMs, and a streaming accumulator over many images.

Confusion matrices have one row per ground-truth label (0 = background, 1..C) and one column per
predicted label plus a last "no prediction" column: shape (L, L + 1) for L = C + 1 labels.

- A ground-truth pixel of 255 (ignore) is not counted at all.
- A prediction of 255 (a pixel the pseudo-label producer left undecided) on a labelled pixel lands
  in the last column: it is a false negative for its ground-truth class (it lowers that class's
  recall and IoU and the pixel accuracy) but a false positive for no class.

Everything here works on numpy arrays with np.bincount; there is no Python loop over pixels,
classes or thresholds.
"""

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
from tqdm import tqdm

IGNORE_INDEX = 255
BACKGROUND = "background"


def _valid_labels(gt, num_labels, what="ground truth"):
    """Flat ground truth and the mask of its labelled pixels; ValueError on values out of range."""
    gt = np.asarray(gt).ravel()
    valid = gt != IGNORE_INDEX
    values = gt[valid]
    if values.size and (values.min() < 0 or values.max() >= num_labels):
        bad = values[(values < 0) | (values >= num_labels)][0]
        raise ValueError(f"{what} value {int(bad)} is outside 0..{num_labels - 1} and not {IGNORE_INDEX} (ignore)")
    return gt, valid


def confusion(gt, pred, num_labels):
    """(num_labels, num_labels + 1) int64 counts: rows = ground truth, columns = prediction, the
    last column = labelled pixels predicted 255 (no prediction). gt == 255 pixels are skipped."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    gt, valid = _valid_labels(gt, num_labels)
    g = gt[valid].astype(np.int64)
    p = pred.ravel()[valid].astype(np.int64)
    undecided = p == IGNORE_INDEX
    wrong = ((p < 0) | (p >= num_labels)) & ~undecided
    if wrong.any():
        raise ValueError(f"prediction value {int(p[wrong][0])} is outside 0..{num_labels - 1} and not {IGNORE_INDEX} (ignore)")
    p[undecided] = num_labels
    counts = np.bincount(g * (num_labels + 1) + p, minlength=num_labels * (num_labels + 1))
    return counts.reshape(num_labels, num_labels + 1).astype(np.int64, copy=False)


def _ratio(numerator, denominator):
    return [float(n) / float(d) if d > 0 else None for n, d in zip(numerator, denominator)]


def label_names(class_names, num_labels):
    """All label names, background first: `class_names` with or without "background"."""
    names = list(class_names)
    if len(names) == num_labels - 1:
        names = [BACKGROUND] + names
    if len(names) != num_labels:
        raise ValueError(f"{len(class_names)} class names for {num_labels} labels")
    return names


def scores(confusion, class_names):
    """Metrics of one confusion matrix ((L, L + 1) as from `confusion`, or a plain (L, L)).

    `class_names`: the L label names (background first) or the C = L - 1 foreground names.
    Returns {miou, per_class_iou, precision, recall, pixel_accuracy, num_pixels}; the per-class
    dicts map each name (background included) to a float or None. A class absent from both ground
    truth and prediction has IoU None and is left out of the mean; precision is None for a class
    never predicted, recall None for a class never in the ground truth.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    num_labels = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] not in (num_labels, num_labels + 1):
        raise ValueError(f"confusion matrix must be (L, L) or (L, L + 1), got {matrix.shape}")
    names = label_names(class_names, num_labels)
    hits = np.diag(matrix[:, :num_labels])
    in_gt = matrix.sum(axis=1)                     # includes the "no prediction" column
    predicted = matrix[:, :num_labels].sum(axis=0)
    union = in_gt + predicted - hits
    iou = _ratio(hits, union)
    present = [v for v in iou if v is not None]
    num_pixels = int(matrix.sum())
    return {
        "miou": float(np.mean(present)) if present else None,
        "per_class_iou": dict(zip(names, iou)),
        "precision": dict(zip(names, _ratio(hits, predicted))),
        "recall": dict(zip(names, _ratio(hits, in_gt))),
        "pixel_accuracy": float(hits.sum()) / num_pixels if num_pixels else None,
        "num_pixels": num_pixels,
    }


def _as_compared(peak, thresholds):
    """The thresholds as float64 values that compare with float64(peak) exactly as `peak <= t`
    compares with each t in cams_to_labels (NumPy's promotion: a Python float meets a float32 map
    as float32, a np.float64 as float64)."""
    return np.array([np.float64(np.result_type(peak, t).type(t)) for t in thresholds], dtype=np.float64)


def sweep_confusions(cams, classes, gt, thresholds, num_labels):
    """(T, L, L + 1) confusion matrices of `cams_to_labels(cams, classes, t)` against `gt` for
    every t in `thresholds`, in one pass over the pixels.

    A pixel with peak CAM value m and strongest class a is labelled a for every threshold t < m and
    background (0) for every t >= m. With the thresholds sorted, k = searchsorted(t, m, "left")
    (the index of the first threshold >= m) says it is foreground exactly at thresholds 0..k-1.
    One bincount over (k, gt, a) gives a histogram H of shape (T + 1, L, L); the matrices are then
    the suffix sums of H over k (foreground) plus, in the background column, the prefix sums of
    its row totals (pixels already background at that threshold).
    """
    cams = np.asarray(cams)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    gt = np.asarray(gt)
    if cams.ndim != 3 or len(cams) != len(classes) or cams.shape[1:] != gt.shape:
        raise ValueError(f"CAMs {cams.shape} of {len(classes)} classes do not match ground truth {gt.shape}")
    if classes.size and (classes.min() < 1 or classes.max() >= num_labels):
        raise ValueError(f"CAM classes {classes.tolist()} are outside 1..{num_labels - 1}")
    num_thresholds = len(thresholds)
    flat_gt, valid = _valid_labels(gt, num_labels)
    g = flat_gt[valid].astype(np.int64)
    if classes.size:
        peak = cams.max(axis=0)
        limits = _as_compared(peak, thresholds)
        m = peak.ravel()[valid].astype(np.float64)
        a = classes[cams.argmax(axis=0).ravel()[valid]]
    else:  # no class: background everywhere, at every threshold
        limits = np.asarray(thresholds, dtype=np.float64)
        m = np.full(g.shape, -np.inf)
        a = np.zeros_like(g)
    order = np.argsort(limits, kind="stable")
    k = np.searchsorted(limits[order], m, side="left")
    L = num_labels
    hist = np.bincount((k * L + g) * L + a, minlength=(num_thresholds + 1) * L * L)
    hist = hist.reshape(num_thresholds + 1, L, L)
    foreground = np.cumsum(hist[::-1], axis=0)[::-1][1:]        # pixels with k > j
    background = np.cumsum(hist.sum(axis=2), axis=0)[:-1]       # pixels with k <= j
    sweep = np.zeros((num_thresholds, L, L + 1), dtype=np.int64)
    sweep[:, :, :L] = foreground
    sweep[:, :, 0] += background
    out = np.empty_like(sweep)
    out[order] = sweep                                          # back to the caller's order
    return out


def accumulate(compute, ids, *, workers=1, desc="evaluate"):
    """Sum of compute(id) (equal-shaped int64 arrays) over `ids`, computed in `workers` threads.

    Only the running total is kept: at most 2 * workers images are in flight at any time, so memory
    does not grow with the number of images. The first exception raised by `compute` stops the run
    and propagates. A tqdm bar shows progress on a terminal. Returns None for no ids.
    """
    workers = max(1, int(workers))
    pending_ids = iter(ids)
    total = None
    # The bar shows on a terminal only: logs and captured stderr keep just the messages.
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(ids), desc=desc, unit="img", mininterval=1.0,
                                                  disable=True if not ids else None) as bar:
        pending = set()

        def refill():
            for image_id in pending_ids:
                pending.add(pool.submit(compute, image_id))
                if len(pending) >= 2 * workers:
                    return

        refill()
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    if total is None:
                        total = np.array(result, dtype=np.int64)
                    else:
                        total += result
                    bar.update()
                refill()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return total
