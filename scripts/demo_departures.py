"""Measure, on the demo, each departure of the demo's settings from the official L2G/deeplab-pytorch
recipe: the demo run, then one variant per departure with that one setting set back to its
official value, every other stage copied from the demo run (so a variant retrains only what the
setting changes). Prints a Markdown table and writes it, with the numbers, to
results/demo/departures/summary.{md,json}.

    python scripts/demo_departures.py --cores 2     # over an hour on 2 CPU cores

The variants are datasets demo_<name> (results/demo_<name>/) in a config written beside the
summary; a variant already built is not rebuilt.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BASE = "demo"
L2G_UPSTREAM = ("data", "cls")
SEG_UPSTREAM = ("data", "cls", "control", "l2g", "l2g_no_saliency",
                "cls_cams", "control_cams", "cams", "no_saliency_cams")

# name: (what is set back to the official value, config overrides, stages copied from the demo run)
VARIANTS = {
    "start_pretrained": ("L2G starts from the backbone's init (random here: the demo backbone has no "
                         "ImageNet weights) instead of the stage-1 classifier",
                         {"train_l2g": {"start": "pretrained"}}, L2G_UPSTREAM),
    "roi_align_legacy": ("crop boxes on the corners of the feature cells (roi_align: legacy)",
                         {"train_l2g": {"roi_align": "legacy"}}, L2G_UPSTREAM),
    "saliency_nearest": ("saliency resized to the CAM grid by nearest neighbour (saliency_resize: nearest)",
                         {"train_l2g": {"saliency_resize": "nearest"}}, L2G_UPSTREAM),
    "saliency_max": ("saliency divided by its per-image maximum (saliency_norm: max)",
                     {"train_l2g": {"saliency_norm": "max"}}, L2G_UPSTREAM),
    "background_channel": ("official VOC targets: the local scores, the winner gated by the saliency "
                           "(background: channel)", {"train_l2g": {"background": "channel"}}, L2G_UPSTREAM),
    "background_channel_score": ("official COCO targets: background = local background score x "
                                 "(1 - saliency) (background: channel_score)",
                                 {"train_l2g": {"background": "channel_score", "bg_thr": 0.1}}, L2G_UPSTREAM),
    "random_crops": ("random crops, no corner crops (crop_layout: random)",
                     {"train_l2g": {"crop_layout": "random"}}, L2G_UPSTREAM),
    "no_global_cls": ("no classification loss on the global network (global_cls_weight: 0)",
                      {"train_l2g": {"global_cls_weight": 0.0}}, L2G_UPSTREAM),
    "kd_weight_10": ("kd_weight 10 (official VOC)", {"train_l2g": {"kd_weight": 10}}, L2G_UPSTREAM),
    "l2g_official": ("all of the L2G settings above but the start and the crops, at once",
                     {"train_l2g": {"roi_align": "legacy", "saliency_resize": "nearest", "saliency_norm": "max",
                                    "background": "channel", "global_cls_weight": 0.0, "kd_weight": 10}},
                     L2G_UPSTREAM),
    "l2g_seed_1": ("not a departure: the demo's L2G settings, seed 1 (how far the seed alone moves it)",
                   {"train_l2g": {"seed": 1}}, L2G_UPSTREAM),
    "l2g_seed_2": ("not a departure: the demo's L2G settings, seed 2",
                   {"train_l2g": {"seed": 2}}, L2G_UPSTREAM),
    "gen_gt": ("pseudo labels as gen_gt.py: argmax over [0.25, CAMs], no saliency, no CRF, no ignore",
               {"refine": {"background": "cam", "threshold": 0.25, "ignore_band": None, "crf": False}},
               SEG_UPSTREAM),
    "gen_gt_crf": ("gen_gt labels refined by the dense CRF",
                   {"refine": {"background": "cam", "threshold": 0.25, "ignore_band": None, "crf": True}},
                   SEG_UPSTREAM),
    "loss_on_logits": ("DeepLab loss at the logits' resolution, labels resized down (loss_resolution: logits)",
                       {"train_seg": {"loss_resolution": "logits"}}, SEG_UPSTREAM + ("pseudo_labels",)),
}


def merged(base, overrides):
    section = json.loads(json.dumps(base))
    for key, values in overrides.items():
        section[key] = {**section[key], **values}
    return section


def copy_upstream(results, name, folders):
    """The demo run's outputs of the stages a variant does not change, with their times kept."""
    for folder in folders:
        source, target = results / BASE / folder, results / f"{BASE}_{name}" / folder
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target, copy_function=shutil.copy2)


def score(results, dataset, path, key="miou"):
    file = results / dataset / path
    return json.loads(file.read_text())[key] if file.exists() else None


def measure(results, name, folders):
    """The variant's score on what it changes: the L2G CAMs, or the pseudo labels and DeepLab."""
    dataset = f"{BASE}_{name}" if name else BASE
    row = {"cams": score(results, dataset, "cams/miou.json")}
    if name is None or folders is not L2G_UPSTREAM:
        row.update(pseudo_labels=score(results, dataset, "pseudo_labels/miou.json"),
                   deeplab=score(results, dataset, "miou.json"))
    return {k: None if v is None else round(100 * v, 1) for k, v in row.items()}


def table(rows):
    lines = ["| variant (one setting set to the official value) | L2G CAMs, train | pseudo labels, train | "
             "DeepLab, val |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = [row.get(k) for k in ("cams", "pseudo_labels", "deeplab")]
        lines.append(f"| {row['label']} | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="measure these variants only")
    args = parser.parse_args(argv)
    names = args.only or list(VARIANTS)
    results, out = REPO / "results", REPO / "results" / BASE / "departures"
    snakemake = [str(Path(sys.executable).parent / "snakemake"), "--cores", str(args.cores)]
    subprocess.run(snakemake + ["--", f"results/{BASE}/miou.json"], cwd=REPO, check=True)

    base = yaml.safe_load((REPO / "config/config.yaml").read_text())["datasets"][BASE]
    config = {"datasets": {f"{BASE}_{n}": merged(base, VARIANTS[n][1]) for n in names}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    targets = []
    for name in names:
        _, _, folders = VARIANTS[name]
        copy_upstream(results, name, folders)
        targets.append(f"results/{BASE}_{name}/" + ("cams/miou.json" if folders is L2G_UPSTREAM else "miou.json"))
    subprocess.run(snakemake + ["--configfile", str(out / "config.yaml"), "--", *targets], cwd=REPO, check=True)

    rows = [{"name": BASE, "label": "the demo's settings", **measure(results, None, None)}]
    rows += [{"name": n, "label": VARIANTS[n][0], **measure(results, n, VARIANTS[n][2])} for n in names]
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "summary.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
