"""What the scoring stages share: reading predictions, checking they are all there and of the
ground truth's size, the CSV tables, and the summaries of earlier stages carried into a result
(`--stage NAME=METRICS_JSON`)."""

import csv
import io

import numpy as np
from PIL import Image

from l2g_core.errors import L2GError
from l2g_core.io_utils import read_json


def check_all_present(paths, what, split):
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise L2GError(f"{missing[0]}: {what} missing ({len(missing)} of {len(paths)} images of split "
                       f"{split} have none)")


def size_error(path, shape, gt_path, gt_shape):
    return L2GError(f"{path}: prediction is {shape[1]}x{shape[0]} but its ground truth {gt_path} "
                    f"is {gt_shape[1]}x{gt_shape[0]}")


def load_png(path):
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise L2GError(f"{path}: prediction must be a single-channel PNG (palette or L), not {image.mode}")
            return np.asarray(image, dtype=np.uint8)
    except OSError as error:
        raise L2GError(f"{path}: cannot read prediction ({error})") from None


def csv_text(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()


STAGE_KEYS = ("miou", "miou_no_crf", "best_threshold", "split", "num_images")


def stage_summary(item, option="--stage"):
    """'cams=results/demo/cams/miou.json' -> ('cams', {miou, best_threshold, ...})."""
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise L2GError(f"{option} {item!r}: expected NAME=METRICS_JSON")
    metrics = read_json(path, "stage metrics not found")
    summary = {key: metrics[key] for key in STAGE_KEYS if key in metrics}
    if isinstance(metrics.get("saliency_baseline"), dict):
        summary["saliency_baseline"] = metrics["saliency_baseline"]["miou"]
    return name, {**summary, "file": str(path)}
