"""Item 6: wall time of the demo pipeline per stage, read from the Snakemake benchmark files
(results/demo/benchmarks/*.tsv: s, h:m:s, max_rss, ..., cpu_time) of the last `snakemake` run.
The bench does not run the demo itself; with no files it says so.
"""

import csv
import datetime
from pathlib import Path


def _number(record, key):
    try:
        return float(record[key])
    except (KeyError, TypeError, ValueError):
        return None


def read_benchmarks(folder):
    rows = []
    for path in sorted(Path(folder).glob("*.tsv")):
        with open(path, newline="") as handle:
            records = list(csv.DictReader(handle, delimiter="\t"))
        if not records:
            continue
        record = records[-1]
        rows.append({"stage": path.stem, "s": _number(record, "s"), "max_rss_mib": _number(record, "max_rss"),
                     "cpu_time_s": _number(record, "cpu_time"), "mean_load": _number(record, "mean_load"),
                     "written": datetime.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")})
    return rows


def run(ctx):
    folder = Path(ctx.results_dir) / "benchmarks"
    stages = read_benchmarks(folder)
    total = sum(s["s"] for s in stages if s["s"] is not None)
    rows = [{"measure": f"demo stage {s['stage']}", "pipeline": f"{s['s']:.3g} s",
             "reference": "", "ratio": None, "target": "(reported)", "met": None,
             "check": f"max RSS {s['max_rss_mib']:.0f} MiB, CPU {s['cpu_time_s']:.3g} s"} for s in stages]
    if stages:
        rows.append({"measure": "demo, sum of the stages", "pipeline": f"{total:.0f} s", "reference": "",
                     "ratio": None, "target": "(reported)", "met": None,
                     "check": f"{len(stages)} benchmark files, last written {max(s['written'] for s in stages)}"})
    else:
        rows.append({"measure": "demo per stage", "pipeline": "no benchmark files", "reference": "", "ratio": None,
                     "target": "(reported)", "met": None, "check": f"run `snakemake --cores 2` first ({folder})"})
    return {"item": "e2e", "setup": {"benchmarks": str(folder)}, "agree": True, "check": {},
            "figures": {"stages": stages, "sum_s": total}, "rows": rows}
