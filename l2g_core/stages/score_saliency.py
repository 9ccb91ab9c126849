"""`l2g score-saliency`: how good a run's saliency maps are, against the ground-truth foreground.

Scores the maps of a split (--saliency-dir, default the dataset's ROOT/Sal; the pipeline's own in
results/{dataset}/saliency) as the salient-object-detection field does (l2g_core.saliency_metrics:
MAE, the F-measure at the adaptive threshold, beta^2 = 0.3, and the maximum F-measure), with the
foreground of the class masks (mask > 0; 255 left out). Writes --out (saliency/score.json) with
the maps' record (l2g_core.saliency.maps_record: where they came from).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm import tqdm

from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_json
from l2g_core.parallel import available_cores
from l2g_core.saliency import add_saliency_dir_argument, maps_record
from l2g_core.saliency_metrics import SaliencyScore, image_scores
from l2g_core.scoring import check_all_present


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--split", default="train", help="split role whose maps are scored (default train)")
    add_saliency_dir_argument(parser, "this score")
    parser.add_argument("--out", required=True, help="JSON to write (results/{dataset}/saliency/score.json)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="threads reading files")


def read_map(path):
    """A saliency map as stored, 0..255 uint8 (H, W)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def run(args):
    manifest = load_manifest(args.manifest)
    layout = VOCLayout(manifest["root"], args.saliency_dir)
    ids = split_ids(manifest, args.split)
    if not layout.has_saliency():
        raise L2GError(f"{layout.saliency_dir}: no saliency maps folder to score")
    check_all_present([layout.saliency_path(i) for i in ids], "saliency map", args.split)
    check_all_present([layout.mask_path(i) for i in ids], "ground-truth mask", args.split)

    def score(image_id):
        saliency, mask = read_map(layout.saliency_path(image_id)), layout.load_mask(image_id)
        if saliency.shape != mask.shape:
            raise L2GError(f"{layout.saliency_path(image_id)}: map is {saliency.shape[1]}x{saliency.shape[0]} "
                           f"but its mask is {mask.shape[1]}x{mask.shape[0]}")
        return image_scores(saliency, mask)

    total = SaliencyScore()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        for scores in tqdm(pool.map(score, ids), total=len(ids), desc="score saliency", unit="img", mininterval=1.0):
            total.add(scores)
    result = {"split": args.split, "maps": maps_record(layout), **total.result(),
              "foreground": "ground-truth mask > 0, pixels marked 255 left out"}
    write_json(args.out, result)
    print(f"saliency maps ({result['maps']['source']}) on {args.split}: MAE {result['mae']:.4f}, "
          f"F-measure {result['f_adaptive']:.4f} (adaptive), {result['f_max']:.4f} (max)")
