"""Regenerate every figure of the README and docs/ from the files and commands they come from.

A generated block sits between two marker lines naming its kind and its source:

    <!-- experiment: results/demo/experiments/seeds/summary.md -->   an experiment's summary tables
    <!-- run: results/demo -->          a single run's scores: the table of miou.json, the stage files
                                        it names and supervised/miou.json, the comparisons between
                                        them with their numbers, and the verdicts of expectations.json
    <!-- run-times: results/demo -->    the run's time: each stage's seconds (benchmarks/*.tsv, shards
                                        summed), their sum and the span from the first job to the last
    <!-- jobs: snakemake -n --cores 2 -->  the jobs of that dry run in an empty folder, with the
                                        repository's Snakefile and config/config.yaml
    ...generated, do not edit...
    <!-- end KIND -->

Make the results (`snakemake --cores 2`; `snakemake results/demo/experiments/seeds/summary.md
--cores 2`, one target per experiment marker), then run `python scripts/docs_tables.py` from the
repository root: every marked block of docs/*.md and README.md is replaced. A block whose source is
not made yet is left as it is, and named.

Usage: python scripts/docs_tables.py [FILE.md ...] [--results-root DIR]
"""

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?P<head><!-- (?P<kind>experiment|run|run-times|jobs): (?P<source>[^\n]*?) -->\n)"
                   r"(?P<body>.*?)(?P<tail><!-- end (?P=kind) -->)", re.S)
# How to make the source of each kind of block (named when it is missing).
HOW = {"experiment": "snakemake {source} --cores 2", "run": "snakemake --cores 2",
       "run-times": "snakemake --cores 2", "jobs": "{source}"}


def percent(value):
    return f"{100 * value:.1f}"


def duration(seconds):
    minutes, rest = divmod(round(seconds), 60)
    return f"{seconds:.0f} s" if minutes == 0 else f"{minutes} min {rest:02d} s"


# --- experiment: an experiment's summary ----------------------------------------------------------


def summary_table(path):
    """The summary's Markdown without its title line."""
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def experiment_block(source, root):
    path = root / source
    return summary_table(path) if path.is_file() else None


# --- run: a single run's scores -------------------------------------------------------------------

# The CAM stages a final miou.json carries, in pipeline order, with their rows' labels.
CAM_ROWS = {"cls_cams": "plain CAMs, stage 1", "control_cams": "control: stage 1 trained on as long as L2G",
            "cams": "L2G CAMs, with saliency", "no_saliency_cams": "L2G CAMs, without saliency"}
SUBSET = "_train_subset"


def read(path):
    return json.loads(Path(path).read_text())


def run_block(source, root):
    """The table of a finished run (results/NAME): each stage's mIoU in %, from the file named in
    its row; the comparisons the demo is about, computed; the expectations' verdicts."""
    folder = root / source
    if not (folder / "miou.json").is_file() or not (folder / "supervised/miou.json").is_file():
        return None
    final, supervised = read(folder / "miou.json"), read(folder / "supervised/miou.json")
    stages = final["stages"]

    def where(name):  # the stage's file, as the reader finds it under results/NAME/
        return Path(stages[name]["file"]).relative_to(source).as_posix()

    rows = []
    for part in ("", SUBSET):
        for name, label in CAM_ROWS.items():
            if name + part in stages:
                stage = stages[name + part]
                rows.append((f"{label} (`{where(name + part)}`)", stage["split"], percent(stage["miou"])))
        labels = stages.get("pseudo_labels" + part)
        if labels is not None:
            file = where("pseudo_labels" + part)
            ignored = read(root / stages["pseudo_labels" + part]["file"]).get("ignored_fraction")
            if labels.get("saliency_baseline") is not None:
                rows.append((f"saliency baseline: saliency > threshold, class from the L2G CAM (`{file}`: "
                             "`saliency_baseline`)", labels["split"], percent(labels["saliency_baseline"])))
            rows.append((f"pseudo labels without the CRF (`{file}`: `miou_no_crf`)", labels["split"],
                         percent(labels["miou_no_crf"])))
            share = f"; {percent(ignored)}% of pixels left at 255 (`ignored_fraction`)" if ignored is not None else ""
            rows.append((f"pseudo labels (`{file}`: `miou`{share})", labels["split"], percent(labels["miou"])))
    rows.append((f"**DeepLab on the pseudo labels** (`miou.json`: `miou`; `miou_no_crf` "
                 f"{percent(final['miou_no_crf'])})", final["split"], f"**{percent(final['miou'])}**"))
    rows.append((f"the same DeepLab on the ground truth (`supervised/miou.json`: `miou`; `miou_no_crf` "
                 f"{percent(supervised['miou_no_crf'])})", supervised["split"], percent(supervised["miou"])))
    lines = ["mIoU in percent, from the files named in the first column (under `" + source + "/`):", "",
             "| result | split | mIoU |", "| --- | --- | --- |", *(f"| {a} | {b} | {c} |" for a, b, c in rows), ""]
    lines += comparisons(stages, final, supervised)
    verdicts = folder / "expectations.json"
    if verdicts.is_file():
        table = read(verdicts)
        failed = [v["expectation"] for v in table["verdicts"] if v["holds"] is False]
        lines += ["", f"Expectations (config `expect:`, `expectations.md`): {table['holds']} hold, {table['fails']} "
                      f"fail, {table['not_measured']} not measured" + (f" (fails: `{'`, `'.join(failed)}`)" if failed
                                                                       else "") + "."]
    return "\n".join(lines) + "\n"


def comparisons(stages, final, supervised):
    """The comparisons the demo shows, each with its numbers."""
    lines = []
    control = stages.get("control_cams")
    gains = [(label, stages[name]) for name, label in (("cams", "with saliency"), ("no_saliency_cams", "without"))
             if name in stages]
    if control is not None and gains:
        lines.append("L2G's CAMs minus the control's (the same start and budget without the transfer): "
                     + ", ".join(f"{100 * (stage['miou'] - control['miou']):+.1f} points {label}"
                                 for label, stage in gains) + ".")
    if supervised["miou"]:
        lines.append(f"DeepLab on the pseudo labels reaches {percent(final['miou'] / supervised['miou'])}% of the same "
                     f"DeepLab on the ground truth ({percent(final['miou'])} / {percent(supervised['miou'])}; "
                     f"{percent(final['miou_no_crf'] / supervised['miou_no_crf'])}% without the CRF), with the same "
                     "network, initial weights and budget.")
    return lines


# --- run-times: the run's time, from its benchmark files ----------------------------------------


def run_times_block(source, root):
    """Each stage's seconds (shards summed), their sum, and the span from the first job's start to
    the last job's end: a benchmark file is written when its job ends, its run time (column s)
    before that. Experiments' summaries (summarize_*) are not part of the run; a run not finished
    (no final scores) has no run time yet."""
    folder = root / source
    if not (folder / "miou.json").is_file() or not (folder / "supervised/miou.json").is_file():
        return None
    files = [p for p in sorted((folder / "benchmarks").glob("*.tsv")) if not p.name.startswith("summarize_")]
    seconds, shards, starts, ends = {}, {}, [], []
    for path in files:
        rows = path.read_text().splitlines()
        taken = sum(float(line.split("\t")[0]) for line in rows[1:] if line.strip())
        stage = re.sub(r"-\d+-of-\d+$", "", path.stem)
        seconds[stage] = seconds.get(stage, 0.0) + taken
        shards[stage] = shards.get(stage, 0) + 1
        ends.append(path.stat().st_mtime)
        starts.append(path.stat().st_mtime - taken)
    longest = sorted(seconds, key=seconds.get, reverse=True)
    lines = [f"{len(files)} jobs (`{source}/benchmarks/*.tsv`, one per job): {duration(max(ends) - min(starts))} "
             f"from the first job's start to the last one's end, {duration(sum(seconds.values()))} of job time in all. "
             "Each stage, longest first (seconds, shards summed):", "",
             "| stage | jobs | seconds |", "| --- | --- | --- |"]
    lines += [f"| {stage} | {shards[stage]} | {seconds[stage]:.0f} |" for stage in longest]
    return "\n".join(lines) + "\n"


# --- jobs: a dry run's plan -----------------------------------------------------------------------


def jobs_block(source, root):
    """The jobs of the dry run `source` (snakemake -n ...) in an empty folder: their count per rule."""
    words = shlex.split(source)
    if words[:1] != ["snakemake"] or "-n" not in words:
        raise SystemExit(f"docs_tables: jobs: {source!r}: give a dry run, snakemake -n ...")
    executable = Path(sys.executable).parent / "snakemake"
    with tempfile.TemporaryDirectory() as empty:
        result = subprocess.run([str(executable) if executable.is_file() else "snakemake", *words[1:],
                                 "--snakefile", str(REPO / "Snakefile"), "--directory", empty,
                                 "--configfile", str(REPO / "config/config.yaml")],
                                capture_output=True, text=True, cwd=empty)
    text = result.stdout + result.stderr
    if result.returncode != 0 or "Job stats:" not in text:
        raise SystemExit(f"docs_tables: jobs: {source} failed:\n{text[-2000:]}")
    table = text[text.index("Job stats:"):].split("\n\n")[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.M))
    total = counts.pop("total")
    return (f"**{total} jobs** (`{source}` in an empty folder: "
            + ", ".join(f"{rule} {count}" for rule, count in counts.items()) + ")\n")


GENERATORS = {"experiment": experiment_block, "run": run_block, "run-times": run_times_block, "jobs": jobs_block}


def regenerate(text, root, missing):
    """`text` with every marked block replaced by what its source gives now; the sources not made
    yet are added to the set `missing` ((kind, source)) and their blocks left as they are."""
    def replace(match):
        body = GENERATORS[match["kind"]](match["source"], root)
        if body is None:
            missing.add((match["kind"], match["source"]))
            return match.group(0)
        return match["head"] + body + match["tail"]

    return BLOCK.sub(replace, text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default docs/*.md and README.md)")
    parser.add_argument("--results-root", type=Path, default=Path("."), help="folder holding results/ (default .)")
    args = parser.parse_args(argv)
    files = args.files or [*sorted(Path("docs").glob("*.md")), Path("README.md")]
    missing = set()
    new = {path: regenerate(path.read_text(), args.results_root, missing) for path in files}
    for kind, source in sorted(missing):
        how = HOW[kind].format(source=source)
        print(f"docs_tables: {source} not made yet ({how}): its {kind} blocks are left as they are", file=sys.stderr)
    for path, text in new.items():
        if text != path.read_text():
            path.write_text(text)
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
