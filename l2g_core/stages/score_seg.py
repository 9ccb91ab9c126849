"""`l2g score-seg`: the number users quote, `results/{dataset}/miou.json`, and its table.

Scores a folder of predictions (from `l2g label-seg`) against the ground truth of a split, in
one pass: the final labels (ID.png) and, where the CRF ran, the argmax before it (no_crf/ID.png).
`--stage NAME=METRICS_JSON` carries the numbers of earlier stages (plain CAMs, L2G CAMs, pseudo
labels) into the same file, so one JSON tells the whole run.

The final score also judges the run's expectations (l2g_core.expectations): --expect holds the
ranges on this score and the margins between stages, judged on this score, the --stage files and
the --reference files (earlier scores read for an expectation only: supervised); with --verdicts it
writes every verdict of the run, those stored in the files it read and its own, as one table.

    OUT.json  miou, miou_no_crf, per_class_iou (by class name), per_class_iou_no_crf, precision,
              recall, pixel_accuracy, split, num_images, crf, model, stages, expectations (the
              verdicts judged here)
    OUT.csv   class, iou, iou_no_crf, precision, recall; a last row "mean" with the two mIoUs
    VERDICTS  (--verdicts, .json) dataset, holds, fails, not_measured, verdicts; beside it, .md: the
              table, also printed
"""

from pathlib import Path

import numpy as np

from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.evaluation import accumulate, confusion, label_names, scores
from l2g_core.expectations import add_options, counts, enforce, judge_own, report, run_table, scores_of
from l2g_core.io_utils import read_json, write_json, write_text
from l2g_core.parallel import available_cores
from l2g_core.scoring import check_all_present, csv_text, load_png, size_error, stage_summary
from l2g_core.shards import MANIFEST, NO_CRF_DIR, read_manifest

def configure(parser):
    parser.add_argument("--manifest", required=True, help="manifest.json of the prepared dataset")
    parser.add_argument("--split", default="val", help="split the predictions cover (default val)")
    parser.add_argument("--pred", required=True, help="folder of predictions ID.png (from l2g label-seg)")
    parser.add_argument("--stage", action="append", default=[], metavar="NAME=METRICS_JSON",
                        help="an earlier stage's metrics to carry into the result (repeatable)")
    parser.add_argument("--out", required=True, help="JSON to write (results/{dataset}/miou.json); CSV beside it")
    parser.add_argument("--workers", type=int, default=available_cores(), help="threads reading files")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=METRICS_JSON",
                        help="an earlier score an expectation names, not carried into the result (repeatable)")
    parser.add_argument("--verdicts", help="JSON to write with every verdict of the run (.md beside it)")
    add_options(parser, "seg or supervised; NAME_no_crf is its miou_no_crf")


def run(args):
    manifest = load_manifest(args.manifest)
    ids = split_ids(manifest, args.split)
    layout = VOCLayout(manifest["root"])
    names = label_names(manifest["class_names"], manifest["num_classes"] + 1)
    stages = dict(stage_summary(item) for item in args.stage)
    pred = Path(args.pred)
    with_crf = read_manifest(pred / MANIFEST)["settings"]["crf"] is not None
    folders = [pred, pred / NO_CRF_DIR] if with_crf else [pred]
    for folder in folders:
        check_all_present([folder / f"{i}.png" for i in ids], "prediction", args.split)
    check_all_present([layout.mask_path(i) for i in ids], "ground truth", args.split)

    def score(image_id):
        gt = layout.load_mask(image_id)
        matrices = []
        for folder in folders:
            path = folder / f"{image_id}.png"
            labels = load_png(path)
            if labels.shape != gt.shape:
                raise size_error(path, labels.shape, layout.mask_path(image_id), gt.shape)
            matrices.append(confusion(gt, labels, len(names)))
        return np.stack(matrices)

    total = accumulate(score, ids, workers=args.workers, desc=f"score {args.split}")
    final = scores(total[0], names)
    raw = scores(total[1], names) if with_crf else final
    if final["num_pixels"] == 0:
        raise L2GError(f"split {args.split}: the ground truth has no labelled pixels")
    result = {"miou": final["miou"], "miou_no_crf": raw["miou"], "per_class_iou": final["per_class_iou"],
              "per_class_iou_no_crf": raw["per_class_iou"], "precision": final["precision"],
              "recall": final["recall"], "pixel_accuracy": final["pixel_accuracy"], "split": args.split,
              "num_images": len(ids), "crf": with_crf, "predictions": str(pred.resolve()), "stages": stages}
    out = Path(args.out)
    rows = [[n, final["per_class_iou"][n], raw["per_class_iou"][n], final["precision"][n], final["recall"][n]]
            for n in names]
    write_text(out.with_suffix(".csv"), csv_text(["class", "iou", "iou_no_crf", "precision", "recall"],
                                                 rows + [["mean", final["miou"], raw["miou"], None, None]]))
    earlier, values = [], {}
    for name, summary in [*stages.items(), *(stage_summary(item, "--reference") for item in args.reference)]:
        metrics = read_json(summary["file"], "stage metrics not found")
        values.update(scores_of(name, metrics))
        earlier += metrics.get("expectations") or []
    result["expectations"] = judge_own(args, result, values)
    write_json(out, result)
    print(f"{manifest['name']} {args.split}: mIoU {final['miou']:.4f} (no CRF {raw['miou']:.4f}) "
          f"over {len(ids)} images")
    report(result["expectations"], strict=False)
    if args.verdicts:
        verdicts = earlier + result["expectations"]
        table = run_table(manifest["name"], verdicts)
        write_text(Path(args.verdicts).with_suffix(".md"), table)
        write_json(args.verdicts, {"dataset": manifest["name"], **counts(verdicts), "verdicts": verdicts})
        print(table, end="")
        enforce(verdicts, args.strict_expectations)
    enforce(result["expectations"], args.strict_expectations)
