"""The benchmark command.

    python -m bench                              # everything (about 15-30 minutes on 2 CPU cores)
    python -m bench --quick                      # tiny inputs, seconds: checks both sides agree
    python -m bench --only evaluator,crf         # some items
    python -m bench --gpu                        # the GPU check, on a CUDA device (under 8 minutes)
    python bench/run.py ...                      # the same
    python -m bench --render bench/results.json  # rewrite docs/benchmarks.md from a run's JSON

Full mode writes bench/results.json and docs/benchmarks.md (--json, --out); quick mode writes only
what --json / --out name. --gpu adds to those files (as --update does): the GPU item replaces an
earlier GPU item, every other item and its run stay; without a CUDA device it prints one line,
exits 1 and writes nothing. The table is printed either way. Exit status 1 when an item fails or the
two sides of a comparison disagree; a missed speed target is reported, not an error.
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402

ITEMS = ("evaluator", "export", "crf", "train_step", "scale", "e2e", "cam_storage", "loader", "gpu_input", "makespan",
         "gpu")
GPU_ONLY = ("gpu",)  # run by --gpu (or --only gpu), never by default
NOT_QUICK = ("makespan",)  # a whole workflow run: its overlap is what tests/test_gpus.py checks


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", metavar="JSON",
                        help="run nothing: write the markdown (--out) of an earlier run's JSON again")
    parser.add_argument("--quick", action="store_true", help="tiny inputs, one repeat: checks agreement in seconds")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU check alone (item gpu): needs a CUDA device, under 8 minutes; adds its "
                             "results to the --json file and its section to the markdown (as --update)")
    parser.add_argument("--only", help=f"comma-separated items to run, of: {', '.join(ITEMS)} (default all)")
    parser.add_argument("--out", help="markdown file to write (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--json", help="JSON file to write (default bench/results.json; none with --quick)")
    parser.add_argument("--update", action="store_true",
                        help="replace only the items run in the existing --json file (the others and their "
                             "commands are kept), then write the markdown of the whole")
    parser.add_argument("--workdir", help="scratch folder (default a new temporary folder, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--warmup", type=int, help="untimed rounds before timing (default 1; quick 0)")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison (default 5; quick 1)")
    parser.add_argument("--threads", type=int,
                        help="torch threads, also OMP_NUM_THREADS of the stage commands run as processes "
                             "(default: torch's default, all cores; quick: 1, steadier on a busy machine)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device of the torch items (default auto: CUDA when visible)")
    parser.add_argument("--scale-images", default="1000,10000",
                        help="item 5: the two dataset sizes for peak memory (default 1000,10000)")
    parser.add_argument("--scale-size", type=int, default=64, help="item 5: image size in pixels (default 64)")
    parser.add_argument("--target", help="item 5: dry-run target, {dataset} for the dataset (default: the furthest "
                                         "the workflow defines, results/{dataset}/miou.json or "
                                         "results/{dataset}/pseudo_labels/miou.json)")
    parser.add_argument("--results", default=str(common.REPO / "results" / "demo"),
                        help="item 6: the demo's results folder holding benchmarks/*.tsv (default results/demo)")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    default = tuple(i for i in ITEMS if i not in GPU_ONLY and not (args.quick and i in NOT_QUICK))
    args.items = GPU_ONLY if args.gpu else default if not args.only else \
        tuple(i.strip() for i in args.only.split(",") if i.strip())
    unknown = [i for i in args.items if i not in ITEMS]
    if unknown:
        parser.error(f"--only: unknown item(s) {', '.join(unknown)}; choose from {', '.join(ITEMS)}")
    if not args.quick:
        args.out = args.out or str(common.REPO / "docs" / "benchmarks.md")
        args.json = args.json or str(common.REPO / "bench" / "results.json")
    # the GPU check runs on another machine than the CPU items, later: it must add to their results
    args.update = args.update or args.gpu
    return args


def run_items(ctx, items):
    import importlib

    results = []
    for item in items:
        ctx.log(f"{item} ...")
        start, load_start = time.perf_counter(), os.getloadavg()[0]
        try:
            result = importlib.import_module(f"bench.{item}").run(ctx)
        except Exception:  # report the failure and go on with the other items
            result = {"item": item, "agree": False, "error": traceback.format_exc()}
            ctx.log(result["error"])
        result["wall_s"] = time.perf_counter() - start
        result["load_average_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
        ctx.log(f"{item}: done in {result['wall_s']:.1f} s" + ("" if result.get("agree", True) else " (DISAGREE)"))
        results.append(result)
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        Path(args.out).write_text(report.markdown(data))
        print(report.table(data["results"]))
        print(f"wrote {args.out}")
        return 0
    import torch

    if "gpu" in args.items and not torch.cuda.is_available():
        print("python -m bench --gpu: no CUDA device is visible to this process", file=sys.stderr)
        return 1
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    saved = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return run(args, torch)
    finally:  # leave a calling process (pytest) as it was
        torch.set_num_threads(saved[0])
        if saved[1] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved[1]


def run(args, torch):
    argv = args.argv
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="l2g-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = common.Context(
        quick=args.quick, workdir=workdir, device=device, results_dir=Path(args.results),
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else 1),
        repeats=args.repeats if args.repeats is not None else (1 if args.quick else 5),
        options={"scale_images": tuple(int(n) for n in args.scale_images.split(",")),
                 "scale_size": args.scale_size, "target": args.target})
    machine = common.machine_info()
    load_at_start = machine.pop("load_average_at_start")
    started = time.perf_counter()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        results = run_items(ctx, args.items)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    this_run = {"date": date, "command": shlex.join(["python", "-m", "bench", *argv]), "quick": args.quick,
                "items": list(args.items), "threads": torch.get_num_threads(), "warmup": ctx.warmup,
                "repeats": ctx.repeats, "device": device, "wall_s": time.perf_counter() - started,
                "load_average_at_start": load_at_start,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "machine": machine}
    runs = [this_run]
    if args.update and args.json and Path(args.json).is_file():  # keep the other items of the last run
        old = json.loads(Path(args.json).read_text())
        machine = old["meta"]["machine"]  # the page's machine; a run on another one names its own
        runs = old["meta"]["runs"] + runs
        for result in results:
            result["run"] = len(runs)
        kept = [r for r in old["results"] if r["item"] not in args.items]
        results = sorted(kept + results, key=lambda r: ITEMS.index(r["item"]))
    else:
        for result in results:
            result["run"] = 1
    data = {"meta": {"machine": machine, "runs": runs}, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = report.markdown(data)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(report.table(results))
    for path in (args.json, args.out):
        if path:
            print(f"wrote {path}")
    return 0 if all(r.get("agree", True) and "error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
