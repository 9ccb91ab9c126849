"""`l2g plot-report`: the figures of a finished run, for `snakemake --report`.

Reads a finished results/{dataset} folder (RESULTS) and writes four PNGs into --out:

    iou_per_class.png  per-class IoU of every stage: plain, control and L2G CAMs (with and
                       without saliency), pseudo labels (the train split), DeepLab on the pseudo
                       labels and the supervised DeepLab (the val split); from the stages' miou.json
    samples.png        a few val images: image, ground truth, L2G CAM, pseudo label, DeepLab and
                       supervised DeepLab predictions. The pipeline makes CAMs and pseudo labels for
                       train images only, so those of the chosen val images are computed here the
                       way the pipeline makes them: the L2G classifier (l2g/model.pt), the scales
                       and flips of cams/manifest.json, the labelling of pseudo_labels/manifest.json
                       (with saliency maps made by the pipeline, those of the val images made here
                       as its saliency stage made them: report_saliency)
    loss_curves.png    each model's train_log.csv (cls, l2g, control, seg, supervised)
    run_times.png      seconds per stage from benchmarks/*.tsv (column s), shards of a stage summed
    expectations.png   the run's expectations (config expect:) and their verdicts, from
                       expectations.json (written by the final score)
"""

import csv
import json
import re
from pathlib import Path

import numpy as np

from l2g_core import plots
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.expectations import summary_text
from l2g_core.io_utils import read_json
from l2g_core.pipeline import CAM_MODELS, L2G_RUNS, OPTIONAL, SCORED, SEG_MODELS, TRAINED_MODELS, metrics_path

FIGURES = ("iou_per_class.png", "samples.png", "loss_curves.png", "run_times.png", "expectations.png")
# Bar colours of the scored stages (pipeline.SCORED), in order: CAMs in blues, the pseudo labels
# green, DeepLab orange, the supervised reference grey.
STAGE_COLOURS = ("#9ecae1", "#6baed6", "#2171b5", "#08306b", "#41ab5d", "#f16913", "#737373")
# Benchmark names in pipeline order (prefixes); other names follow, alphabetically.
STAGE_ORDER = ("make_synthetic", "prepare", "train_cls", *(f"train_{m}" for m in L2G_RUNS), "train_control",
               *(f"{step}_{c}" for step in ("export", "gather", "evaluate") for c in CAM_MODELS),
               "refine", "gather_pseudo_labels", "score_pseudo_labels",
               *(f"{step}_{m}" for step in ("train", "predict", "label") for m in SEG_MODELS),
               "gather_", "score_seg", "score_supervised")
SHARD_SUFFIX = re.compile(r"-(\d+)-of-(\d+)$")
COLUMNS = ("image", "ground truth", "L2G CAM", "pseudo label", "DeepLab\n(pseudo labels)", "DeepLab\n(ground truth)")


def configure(parser):
    parser.add_argument("results", help="the finished run's folder, results/{dataset}")
    parser.add_argument("--out", help="folder for the PNGs (default RESULTS/report)")
    parser.add_argument("--images", type=int, default=4, help="val images in the grid (default 4)")
    parser.add_argument("--ids", nargs="+", help="val image ids for the grid (default: the first ones that "
                                                  "together show the most classes)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cuda or cpu, for the CAMs")


def read_result(path):
    return read_json(path, "not found (run the pipeline to the end first)")


# --- data of each figure -------------------------------------------------------------------------


def stage_scores(results):
    """[{label, note, per_class_iou, miou}, ...] of the scored stages; the note names the split scored."""
    stages = []
    for (product, label), colour in zip(SCORED.items(), STAGE_COLOURS):
        name = metrics_path(product)
        if product in OPTIONAL and not (Path(results) / name).is_file():
            continue
        metrics = read_result(Path(results) / name)
        split = metrics.get("split", "?") + (f", {metrics['num_images']} images" if "num_images" in metrics else "")
        stages.append({"label": label, "note": split, "per_class_iou": metrics["per_class_iou"],
                       "miou": metrics["miou"], "colour": colour})
    return stages


def read_train_log(path):
    """{column: [float, ...]} of a train_log.csv."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: not found (the training stage writes it beside its model)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "update" not in rows[0] or "loss" not in rows[0]:
        raise L2GError(f"{path}: no rows with update and loss columns")
    return {key: [float(row[key]) for row in rows if row[key] not in ("", None)] for key in rows[0]}


def train_logs(results):
    return {folder: read_train_log(Path(results) / folder / "train_log.csv") for folder in TRAINED_MODELS}


def _order(name):
    for index, prefix in enumerate(STAGE_ORDER):
        if name.startswith(prefix):
            return index, name
    return len(STAGE_ORDER), name


def stage_times(benchmarks, skip=("report",)):
    """{label: seconds} from the benchmark files (column s), the shards of a stage summed; the
    label names the stage (the file name without -i-of-n) and how many shards it ran in."""
    totals, shards = {}, {}
    for path in sorted(Path(benchmarks).rglob("*.tsv")):
        name = path.relative_to(benchmarks).with_suffix("").as_posix()
        match = SHARD_SUFFIX.search(name)
        stage = name[:match.start()] if match else name
        if stage in skip:
            continue
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            raise L2GError(f"{path}: not a Snakemake benchmark file (no column s)")
        totals[stage] = totals.get(stage, 0.0) + sum(float(row["s"]) for row in rows)
        shards[stage] = shards.get(stage, 0) + 1
    if not totals:
        raise L2GError(f"{benchmarks}: no benchmark files (*.tsv)")
    return {(f"{stage} ({shards[stage]} shards)" if shards[stage] > 1 else stage): totals[stage]
            for stage in sorted(totals, key=_order)}


def choose_ids(ids, labels, count):
    """The first ids that each show a class not shown yet, then the first others, `count` in all."""
    chosen, seen = [], set()
    for image_id in ids:
        if len(chosen) < count and set(labels[image_id]) - seen:
            chosen.append(image_id)
            seen |= set(labels[image_id])
    chosen += [i for i in ids if i not in chosen][:count - len(chosen)]
    return sorted(chosen, key=ids.index)


def report_cams(model_path, layout, ids, labels, class_names, export_settings, device):
    """{id: (cams (K, H, W) float32, classes)} as `l2g export-cams` writes them (1/255 steps)."""
    from l2g_core.cam_io import quantise
    from l2g_core.model_io import load_classifier
    from l2g_core.runtime import setup_runtime
    from l2g_core.cams import image_cams, model_image_stats

    runtime = setup_runtime(device)
    model, state = load_classifier(model_path, class_names=class_names)
    model.to(runtime.device).eval()
    cams = image_cams(model, layout, ids, labels, export_settings["scales"], export_settings["flip"], 8,
                      model_image_stats(state))
    return {image_id: (quantise(maps).astype(np.float32) / 255.0, np.asarray(classes, dtype=np.int64))
            for image_id, maps, classes in cams}


def report_saliency(results, layout, ids, labels, class_names, refine, device):
    """{id: saliency (H, W) in [0, 1], or None} of the val images, as the pseudo-label column needs
    them: none for background cam; ROOT/Sal's (source folder); or made as the run's saliency stage
    made its training maps (only those exist), from the settings refine recorded: from the stage-1
    CAMs computed here (cams) or by the detector (detector)."""
    from l2g_core.saliency import cams_saliency

    record = refine.get("saliency_maps") or {"source": "folder"}
    if refine.get("background") != "saliency":
        return dict.fromkeys(ids)
    if record["source"] == "folder":
        return {image_id: layout.load_saliency(image_id) for image_id in ids}
    if record["source"] == "cams":
        export = read_result(results / "cls_cams" / "manifest.json")["settings"]
        cams = report_cams(results / "cls" / "model.pt", layout, ids, labels, class_names, export, device)
        maps = {i: cams_saliency(layout.load_image(i), cams[i][0], threshold=record["threshold"], power=record["power"],
                                 crf=record["crf"], crf_params=record["crf_params"]) for i in ids}
    else:
        from l2g_core import detector
        from l2g_core.runtime import setup_runtime

        runtime = setup_runtime(device)
        model = detector.load_detector(record["weights"]["path"], record["input_size"], runtime.device)
        maps = {i: detector.predict(model, layout.load_image(i), record["input_size"], runtime.device) for i in ids}
    return {image_id: saliency.astype(np.float32) / 255.0 for image_id, saliency in maps.items()}


def pseudo_label(image, cams, classes, settings, saliency):
    """The label map `l2g refine` makes with the settings of its manifest."""
    from l2g_core.crf import refine_labels
    from l2g_core.crf import labelling_options

    return refine_labels(image, cams, classes, saliency=saliency, **labelling_options(settings))


def load_label_png(path):
    from l2g_core.scoring import load_png

    if not Path(path).is_file():
        raise L2GError(f"{path}: prediction not found")
    return load_png(path)


def grid_rows(results, manifest, labels, ids, device):
    """[(row title, [6 panels]), ...] for the val images `ids` (labels: the dataset's labels.json)."""
    results = Path(results)
    layout = VOCLayout(manifest["root"])
    export = read_result(results / "cams" / "manifest.json")["settings"]
    refine = read_result(results / "pseudo_labels" / "manifest.json")["settings"]
    cams = report_cams(results / "l2g" / "model.pt", layout, ids, labels, manifest["class_names"], export, device)
    maps = report_saliency(results, layout, ids, labels, manifest["class_names"], refine, device)
    rows = []
    for image_id in ids:
        image = layout.load_image(image_id)
        saliency = maps[image_id]
        image_cams, classes = cams[image_id]
        names = ", ".join(manifest["class_names"][c - 1] for c in classes)
        rows.append((f"{image_id}\n{names}", [
            image, layout.load_mask(image_id), plots.cam_overlay(image, image_cams),
            pseudo_label(image, image_cams, classes, refine, saliency),
            load_label_png(results / "seg" / "pred" / f"{image_id}.png"),
            load_label_png(results / "supervised" / "pred" / f"{image_id}.png")]))
    return rows


# --- the command ---------------------------------------------------------------------------------


def run(args):
    results = Path(args.results)
    out = Path(args.out) if args.out else results / "report"
    if args.images < 1:
        raise L2GError(f"--images {args.images}: need at least 1")
    manifest = load_manifest(results / "data" / "manifest.json")
    class_names = ["background"] + list(manifest["class_names"])
    # Read everything first, so a missing file stops the command before any figure is written.
    scores = stage_scores(results)
    logs = train_logs(results)
    times = stage_times(results / "benchmarks")
    verdicts = read_result(results / "expectations.json")["verdicts"]
    val = split_ids(manifest, "val")
    labels = json.loads(Path(manifest["labels"]).read_text())
    if args.ids:
        unknown = [i for i in args.ids if i not in val]
        if unknown:
            raise L2GError(f"--ids: {', '.join(unknown)} not in the val split")
        ids = list(args.ids)
    else:
        ids = choose_ids(val, labels, args.images)
    rows = grid_rows(results, manifest, labels, ids, args.device)

    name = manifest["name"]
    plots.iou_bars(out / "iou_per_class.png", scores, class_names, title=f"Per-class IoU of each stage ({name})")
    plots.sample_grid(out / "samples.png", rows, COLUMNS, class_names,
                      title=f"{len(ids)} val images of {name} (CAMs and pseudo labels computed for the report)")
    plots.loss_curves(out / "loss_curves.png", logs, TRAINED_MODELS, title=f"Training losses ({name})")
    plots.run_times(out / "run_times.png", times, title=f"Run time of each stage of {name}, shards summed")
    plots.expectation_table(out / "expectations.png", verdicts, title=f"Expectations of {name}: "
                            + (summary_text(verdicts) if verdicts else "none declared"))
    print(f"plot-report: {', '.join(FIGURES)} in {out} (grid: {', '.join(ids)})")
