"""`l2g summarize-experiment`: one sweep's runs as mean ± std per stage and variant.

`--runs` is a JSON object {run: {"variant": name or null, "seed": int or null, "metrics": {kind:
path}}}, where a kind is `final` (a run's miou.json: DeepLab and every earlier stage it carries),
`supervised` (supervised/miou.json), a CAM folder (`cams`: cams/miou.json) or `pseudo_labels`
(pseudo_labels/miou.json: the labels, the saliency baseline and the saliency maps' score, whose
F-measure and MAE the tables show x 100 beside the mIoUs). The workflow's rule
summarize_experiment writes it; each path may be the base dataset's file where the run shares it.

`--expect` (the config's experiments.NAME.expect, l2g_core.expectations) is judged per variant on
the means over its runs and, for statistic: std, on their standard deviation.

    OUT/summary.json  per run its scores; per stage and variant n, mean, std (n - 1) and the values;
                      expectations: the verdicts, each with its variant
    OUT/summary.csv   stage, variant, n, mean, std, then one column per seed (mIoU in [0, 1])
    OUT/summary.md    the mean ± std table (mIoU in %), every run's value, and which expectations hold
    OUT/summary.png   mean ± std per stage and variant, each run a dot
"""

import json
import statistics
from pathlib import Path

from l2g_core import plots
from l2g_core.errors import L2GError
from l2g_core.expectations import (UNIT, add_options, enforce, judge_all, markdown_table, parse_entries, report,
                                   summary_text)
from l2g_core.io_utils import read_json, write_json, write_text
from l2g_core.scoring import csv_text

# Readable names of the scores, in pipeline order; a score not listed keeps its own name, after these.
LABELS = {
    "cls_cams": "plain CAMs (stage 1)",
    "control_cams": "control CAMs",
    "cams": "L2G CAMs",
    "no_saliency_cams": "L2G CAMs without saliency",
    "saliency_f": "saliency maps: F-measure (adaptive)",
    "saliency_mae": "saliency maps: MAE",
    "saliency_baseline": "saliency baseline",
    "pseudo_labels_no_crf": "pseudo labels without CRF",
    "pseudo_labels": "pseudo labels",
    "deeplab_no_crf": "DeepLab without CRF",
    "deeplab": "DeepLab",
    "supervised_no_crf": "supervised DeepLab without CRF",
    "supervised": "supervised DeepLab",
}
RECIPE = "recipe"  # the variant name of a sweep of seeds alone
# The scores an expectation names otherwise than the summary does: {summary's name: expectation's}.
EXPECTATION_NAMES = {"deeplab": "seg", "deeplab_no_crf": "seg_no_crf"}


def configure(parser):
    parser.add_argument("--name", required=True, help="the experiment's name (config experiments.NAME)")
    parser.add_argument("--dataset", required=True, help="the dataset it sweeps")
    parser.add_argument("--runs", required=True, help="JSON: {run: {variant, seed, metrics: {kind: path}}}")
    parser.add_argument("--out", required=True, help="folder for summary.json, .csv, .md and .png")
    add_options(parser)


def run_scores(metrics):
    """{score: mIoU} of one run from its metrics files ({kind: path})."""
    scores = {}
    for kind, path in metrics.items():
        result = read_json(path, "run metrics not found")
        if kind in ("final", "supervised"):
            prefix = "deeplab" if kind == "final" else "supervised"
            scores[prefix] = result["miou"]
            if result.get("crf"):
                scores[f"{prefix}_no_crf"] = result["miou_no_crf"]
            for name, stage in result.get("stages", {}).items():
                scores.update(stage_scores(name, stage))
        else:
            scores.update(stage_scores(kind, result))
    return scores


def stage_scores(name, stage):
    """A stage's mIoU, and its no-CRF and saliency-baseline figures where it has them."""
    scores = {name: stage["miou"]}
    if stage.get("miou_no_crf") is not None and stage["miou_no_crf"] != stage["miou"]:
        scores[f"{name}_no_crf"] = stage["miou_no_crf"]
    baseline = stage.get("saliency_baseline")
    if baseline is not None:  # a number in the stages a miou.json carries; {miou, ...} in pseudo_labels/miou.json
        scores[name.replace("pseudo_labels", "saliency_baseline")] = \
            baseline["miou"] if isinstance(baseline, dict) else baseline
    maps = stage.get("saliency_maps")  # pseudo_labels/miou.json: the score of the maps the run read
    if maps is not None:
        scores.update(saliency_f=maps["f_adaptive"], saliency_mae=maps["mae"])
    return scores


def describe(values):
    """n, mean and sample standard deviation (None for one value)."""
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def ordered(names):
    known = [name for name in LABELS if name in names]
    return known + sorted(set(names) - set(known))


def summarize(runs):
    """{stages: {score: {variant: describe}}, variants, seeds} from {run: {variant, seed, scores}}."""
    variants = list(dict.fromkeys(run["variant"] for run in runs.values()))
    stages = {}
    for score in ordered({name for run in runs.values() for name in run["scores"]}):
        stages[score] = {}
        for variant in variants:
            values = [run["scores"][score] for run in runs.values()
                      if run["variant"] == variant and score in run["scores"]]
            if values:
                stages[score][variant] = describe(values)
    return {"variants": variants, "seeds": list(dict.fromkeys(run["seed"] for run in runs.values())), "stages": stages}


def percent(value):
    return f"{100 * value:.1f}"


def cell(stat):
    if stat is None:
        return ""
    spread = f" ± {percent(stat['std'])}" if stat["std"] is not None else ""
    return f"{percent(stat['mean'])}{spread} (n={stat['n']})"


def markdown(name, dataset, runs, summary):
    variants = summary["variants"]
    maps = " (the saliency maps' F-measure and MAE x 100)" if "saliency_f" in summary["stages"] else ""
    lines = [f"# Experiment {name} on {dataset}", "",
             f"mIoU in %{maps}, mean ± standard deviation over the runs of each variant (n runs).", "",
             "| stage | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for score, by_variant in summary["stages"].items():
        lines.append(f"| {LABELS.get(score, score)} | " + " | ".join(cell(by_variant.get(v)) for v in variants) + " |")
    scores = list(summary["stages"])
    lines += ["", "Every run:", "", "| run | " + " | ".join(LABELS.get(s, s) for s in scores) + " |",
              "|---" * (len(scores) + 1) + "|"]
    for run, entry in runs.items():
        lines.append(f"| {run} | " + " | ".join(percent(entry["scores"][s]) if s in entry["scores"] else ""
                                                 for s in scores) + " |")
    return "\n".join(lines) + "\n"


def judge_variants(entries, summary):
    """The verdicts of the expectations on each variant's means (and stds), each with its variant."""
    verdicts = []
    for variant in summary["variants"]:
        stats = {EXPECTATION_NAMES.get(score, score): by_variant[variant]
                 for score, by_variant in summary["stages"].items() if variant in by_variant}
        means = {name: stat["mean"] for name, stat in stats.items()}
        stds = {name: stat["std"] for name, stat in stats.items()}
        verdicts += [{"variant": variant, **verdict} for verdict in judge_all(entries, means, stds)]
    return verdicts


def expectations_markdown(verdicts):
    return ("\n## Expectations\n\nJudged on the mean over each variant's runs (std: their sample standard "
            f"deviation). {UNIT} {summary_text(verdicts)}.\n\n" + markdown_table(verdicts, first=(("variant", "variant"),)))


def seed_label(seed):
    return f"seed{seed}" if seed is not None else "value"


def csv_table(runs, summary):
    seeds = summary["seeds"]
    rows = []
    for score, by_variant in summary["stages"].items():
        for variant, stat in by_variant.items():
            by_seed = {run["seed"]: run["scores"].get(score) for run in runs.values() if run["variant"] == variant}
            rows.append([score, variant, stat["n"], stat["mean"], stat["std"], *(by_seed.get(s) for s in seeds)])
    return csv_text(["stage", "variant", "n", "mean", "std", *map(seed_label, seeds)], rows)


def read_runs(text):
    try:
        runs = json.loads(text)
    except json.JSONDecodeError as error:
        raise L2GError(f"--runs: not valid JSON ({error.msg})") from None
    if not isinstance(runs, dict) or not runs:
        raise L2GError("--runs: expected a JSON object with at least one run")
    return runs


def run(args):
    runs = {name: {"variant": entry.get("variant") or RECIPE, "seed": entry.get("seed"),
                   "metrics": entry["metrics"], "scores": run_scores(entry["metrics"])}
            for name, entry in read_runs(args.runs).items()}
    entries = parse_entries(args.expect)
    summary = summarize(runs)
    verdicts = judge_variants(entries, summary)
    out = Path(args.out)
    write_json(out / "summary.json", {"experiment": args.name, "dataset": args.dataset, **summary, "runs": runs,
                                      "expectations": verdicts})
    write_text(out / "summary.csv", csv_table(runs, summary))
    write_text(out / "summary.md", markdown(args.name, args.dataset, runs, summary)
               + (expectations_markdown(verdicts) if verdicts else ""))
    plots.experiment_summary(out / "summary.png", {LABELS.get(s, s): v for s, v in summary["stages"].items()},
                             summary["variants"], title=f"Experiment {args.name} on {args.dataset}")
    print(f"{args.dataset} experiment {args.name}: {len(runs)} runs, {len(summary['variants'])} variant(s), "
          f"{len(summary['stages'])} scores")
    by_variant = {variant: [v for v in verdicts if v["variant"] == variant] for variant in summary["variants"]}
    for variant, judged in by_variant.items():
        report(judged, strict=False, prefix=f"{variant}: ")
    for variant, judged in by_variant.items():
        enforce(judged, args.strict_expectations, prefix=f"{variant}: ")
