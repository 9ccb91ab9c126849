"""Item 5: scale. Peak memory of the per-image stages at two dataset sizes, and the Snakemake
dry-run time of the full DAG at two dataset sizes.

Peak memory: the pipeline's real stage commands (`l2g export-cams`, `l2g evaluate`, `l2g refine`,
each as the Snakemake rule calls it) on a synthetic train split of N images, each command in a
fresh process under bench/peak_rss.py (ru_maxrss of its children: the largest single process,
workers included). Target: flat within 10% from the smaller to the larger N (the stages stream,
they do not hold every image). Images are smaller than the demo's (64 px by default, --scale-size)
so that 10,000 of them are generated and processed in minutes on 2 cores; export uses the demo's
scales 0.5 1.0 1.5 with flip and a random-init small classifier; refine reads the best threshold
from the evaluation, as the pipeline does. Wall times give the images per second at each size.

Dry run: `snakemake -n TARGET` on the dataset `voc` pointed (in a copied config) at a VOC-layout
folder with N train ids (empty placeholder files: a dry run reads no data) for N = 1,000 and
10,582 (train_aug). TARGET defaults to the furthest target the workflow defines
(results/{dataset}/miou.json once its rule exists, otherwise results/{dataset}/pseudo_labels/miou.json;
--target). Check: the dry run succeeds and creates no output.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import BIN, REPO, interleaved, l2g, l2g_command, model_file, synthetic_dataset

TARGET_FLAT = 0.10
TARGET_CANDIDATES = ("results/{dataset}/miou.json", "results/{dataset}/pseudo_labels/miou.json")
PEAK_RSS = Path(__file__).resolve().parent / "peak_rss.py"


def default_target():
    """The furthest target that some rule of the workflow outputs."""
    texts = [p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    for candidate in TARGET_CANDIDATES:
        if any(f'"{candidate}"' in text for text in texts):
            return candidate
    return TARGET_CANDIDATES[-1]


def measure(command):
    out = subprocess.run([sys.executable, str(PEAK_RSS), "--", *map(str, command)], capture_output=True, text=True,
                         cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"peak_rss failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({result['rc']}):\n{result['stderr_tail']}")
    return result


def stage_commands(ctx, manifest, base, model):
    l2g = l2g_command()
    cams, metrics, labels = base / "cams", base / "evaluate" / "miou.json", base / "pseudo_labels"
    return {
        "export-cams": [*l2g, "export-cams", "--manifest", manifest, "--model", model, "--split", "train",
                        "--out", cams, "--scales", 0.5, 1.0, 1.5, "--flip", "--batch-size", 16, "--device", ctx.device],
        "evaluate": [*l2g, "evaluate", "--manifest", manifest, "--split", "train", "--kind", "cam", "--pred", cams,
                     "--out", metrics, "--workers", 2],
        "refine": [*l2g, "refine", "--manifest", manifest, "--split", "train", "--cams", cams, "--out", labels,
                   "--threshold-from", metrics, "--workers", 2],
    }


def memory(ctx, sizes, px):
    """Peak RSS and wall time of each stage command at each size. Quick mode runs export-cams and
    refine in this process (a fresh process importing torch takes seconds to start) and measures
    evaluate only."""
    model = model_file(ctx)
    runs = {}
    for n in sizes:
        ctx.log(f"scale: {n} images of {px} px")
        start = time.perf_counter()
        manifest = synthetic_dataset(ctx, n, px)
        generate_s = time.perf_counter() - start
        runs[n] = {"make_synthetic_and_prepare_s": generate_s}
        for stage, command in stage_commands(ctx, manifest, ctx.folder(f"scale_{n}"), model).items():
            if ctx.quick and stage != "evaluate":
                l2g(command[command.index(stage):])
                continue
            result = measure(command)
            runs[n][stage] = {"max_rss_mib": result["max_rss_kib"] / 1024, "wall_s": result["wall_s"],
                              "images_per_s": n / result["wall_s"], "cpu_s": result["user_s"] + result["sys_s"]}
            ctx.log(f"  {stage}: {runs[n][stage]['max_rss_mib']:.0f} MiB, {result['wall_s']:.1f} s")
    return runs


def voc_folder(root, num_train):
    """A VOC-layout folder of empty placeholder files: num_train train_aug ids, a val list."""
    num_val = max(1, round(num_train * 1449 / 10582))
    train = [f"2000_{i:06d}" for i in range(num_train)]
    val = [f"2001_{i:06d}" for i in range(num_val)]
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train_aug.txt").write_text("\n".join(train) + "\n")
    (lists / "val.txt").write_text("\n".join(val) + "\n")
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png"), ("Sal", ".png")):
        (root / folder).mkdir(exist_ok=True)
        for image_id in train + val:
            (root / folder / f"{image_id}{suffix}").touch()
    return root


def dry_run_command(ctx, num_train, target):
    base = ctx.folder(f"dryrun_{num_train}")
    root = voc_folder(base / "VOC2012", num_train)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["datasets"]["voc"]["root"] = str(root)
    config_path = base / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    workdir = ctx.folder(f"dryrun_{num_train}", "work")
    return workdir, [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                     "--configfile", str(config_path), "--workflow-profile", str(REPO / "profiles" / "default"),
                     "-n", "--cores", "2", "--", target.format(dataset="voc")]


def dry_runs(ctx, counts, target):
    """Time `snakemake -n` at each count; every run (warm-up included) must succeed, list the same
    jobs and create no output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    commands = {n: dry_run_command(ctx, n, target) for n in counts}
    outputs = {n: [] for n in counts}

    def side(n):
        workdir, command = commands[n]
        return lambda: outputs[n].append(subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env))

    timing = interleaved({f"ids_{n}": side(n) for n in counts}, warmup=ctx.warmup, repeats=min(ctx.repeats, 3))
    checks = {}
    for n in counts:
        jobs = [re.search(r"^total\s+(\d+)", out.stdout, re.MULTILINE) for out in outputs[n]]
        made = (commands[n][0] / "results").exists()
        failed = [out for out in outputs[n] if out.returncode != 0]
        checks[n] = {"ok": not failed and not made and all(jobs), "runs": len(outputs[n]),
                     "jobs": int(jobs[0].group(1)) if jobs[0] else None, "created_outputs": made,
                     "error_tail": (failed[0].stdout + failed[0].stderr)[-2000:] if failed else ""}
    return checks, timing


def imports_torch(module):
    """Whether importing a stage module (in a fresh process) imports torch: about a second or more
    of start-up and most of a process's resident memory."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() == "True" if out.returncode == 0 else None


def scontrol_seconds():
    """Wall time of `scontrol show config`, which the SLURM executor plugin runs when Snakemake
    starts (when SLURM's tools are on PATH): part of every Snakemake start on such a machine."""
    if not shutil.which("scontrol"):
        return None
    start = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - start


def run(ctx):
    if ctx.quick:  # no dry run: one Snakemake start alone takes seconds (see scontrol_seconds)
        sizes, px, counts = (10, 20), 32, ()
    else:
        sizes, px = tuple(ctx.options.get("scale_images", (1000, 10000))), ctx.options.get("scale_size", 64)
        counts = (1000, 10582)
    target = ctx.options.get("target") or default_target()
    runs = memory(ctx, sizes, px)
    small, large = sizes[0], sizes[-1]
    rows, growth, fixed = [], {}, {}
    for stage in ("export-cams", "evaluate", "refine"):
        if stage not in runs[small]:
            rows.append({"measure": f"peak RSS of l2g {stage}", "pipeline": "not measured in quick mode",
                         "reference": "", "ratio": None, "target": f"flat within {100 * TARGET_FLAT:g}%",
                         "met": None, "check": ""})
            continue
        a, b = runs[small][stage], runs[large][stage]
        growth[stage] = b["max_rss_mib"] / a["max_rss_mib"] - 1
        # wall = fixed + per_image * n, from the two sizes: the start-up cost and the rate at scale.
        per_image = (b["wall_s"] - a["wall_s"]) / (large - small)
        fixed[stage] = {"fixed_s": a["wall_s"] - per_image * small, "per_image_ms": 1000 * per_image}
        rows.append({"measure": f"peak RSS of l2g {stage}: {large:,} vs {small:,} images ({px} px)",
                     "pipeline": f"{b['max_rss_mib']:.0f} MiB", "reference": f"{a['max_rss_mib']:.0f} MiB",
                     "ratio": None, "target": f"flat within {100 * TARGET_FLAT:g}%",
                     "met": abs(growth[stage]) <= TARGET_FLAT,
                     "check": f"{100 * growth[stage]:+.1f}%; {b['images_per_s']:.3g} vs {a['images_per_s']:.3g} img/s"})
    checks, timing, dry, failed_targets = {}, {}, {}, {}
    if counts:
        checks, timing = dry_runs(ctx, counts, target)
        # The default target may not dry-run yet (a rule in the making): fall back to the next one.
        while not ctx.options.get("target") and not all(c["ok"] for c in checks.values()) \
                and TARGET_CANDIDATES.index(target) + 1 < len(TARGET_CANDIDATES):
            failed_targets[target] = {str(n): c for n, c in checks.items()}
            target = TARGET_CANDIDATES[TARGET_CANDIDATES.index(target) + 1]
            ctx.log(f"scale: dry run failed, falling back to {target}")
            checks, timing = dry_runs(ctx, counts, target)
        lo, hi = counts
        dry = {str(n): timing[f"ids_{n}"]["median_s"] for n in counts}
        ok = all(c["ok"] for c in checks.values())
        rows.append({"measure": f"snakemake -n {target.format(dataset='voc')}: {hi:,} vs {lo:,} ids",
                     "pipeline": f"{dry[str(hi)]:.3g} s", "reference": f"{dry[str(lo)]:.3g} s", "ratio": None,
                     "target": "(reported)", "met": None,
                     "check": f"{checks[hi]['jobs']} jobs each, nothing run" if ok else "dry run FAILED"})
    agree = all(c["ok"] for c in checks.values())
    return {
        "item": "scale",
        "setup": {"sizes": list(sizes), "image_size": px, "dry_run_ids": list(counts), "dry_run_target": target,
                  "export": "scales 0.5 1.0 1.5 + flip, batch 16, random-init small classifier",
                  "evaluate_workers": 2, "refine_workers": 2},
        "agree": agree,
        "check": {"dry_runs": {str(n): c for n, c in checks.items()}, "failed_targets": failed_targets},
        "timing": {"dry_run": timing},
        "figures": {"runs": {str(n): r for n, r in runs.items()}, "rss_growth": growth, "wall_model": fixed,
                    "imports_torch": {} if ctx.quick else {
                        stage: imports_torch(f"l2g_core.stages.{stage.replace('-', '_')}")
                        for stage in ("export-cams", "evaluate", "refine")},
                    "dry_run_s": dry, "scontrol_s": scontrol_seconds() if counts else None},
        "rows": rows,
    }
