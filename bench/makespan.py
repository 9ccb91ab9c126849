"""Item 9: how much of the GPU work runs in parallel under `--cores 8 --resources gpu=2`.

The demo workflow, shrunk (synthetic images of 64 px, a few epochs), with the `voc` section's
`jobs` settings (4 threads per GPU job, one GPU per training job and per shard), runs with 2
pretended GPUs (L2G_FAKE_GPUS=2: every claim, device number and lock is real, the computation
runs on the CPU). From Snakemake's own log (job start and finish times, 1 s resolution): the sum
of the GPU jobs' run times against the time during which at least one GPU job ran. Their ratio is
the mean number of GPU jobs running while any does: 2.0 would keep both GPUs busy all the time.
On this CPU the two "GPU" jobs share its cores, so the times are not GPU times; the overlap is
what the scheduler does, and that is what is measured.
"""

import datetime
import os
import re
import subprocess

import yaml

from bench.common import BIN, REPO

GPU_RULES = ("train_cls", "train_l2g", "train_control", "export_cams", "train_seg", "predict_seg")
TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)


def shrunk_config(quick):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    demo = config["datasets"]["demo"]
    epochs = 1 if quick else 3
    demo["synthetic"] = {"train": 24 if quick else 64, "val": 8, "size": 64, "seed": 0}
    demo["train_cls"].update(input_size=64, epochs=epochs, batch_size=8)
    demo["train_l2g"].update(input_size=64, crop_size=32, num_crops=4, epochs=epochs, batch_size=8)
    demo["export_cams"].update(scales=[1.0, 0.5], batch_size=8)
    demo["train_seg"].update(crop_size=48, iterations=4 if quick else 40, batch_size=4)
    demo["predict_seg"].update(scales=[1.0], batch_size=8)
    demo["jobs"] = config["datasets"]["voc"]["jobs"]
    return config


def job_times(log):
    """[(rule, start, end)] of every finished job, from Snakemake's log (datetimes)."""
    started, finished, rules = {}, {}, {}
    marks = list(TIMESTAMP.finditer(log))
    for mark, following in zip(marks, marks[1:] + [None]):
        block = log[mark.end():following.start() if following else len(log)]
        when = datetime.datetime.strptime(re.sub(" +", " ", mark.group(1)), "%a %b %d %H:%M:%S %Y")
        rule, jobid = re.search(r"^(?:local)?rule (\w+):", block, re.M), re.search(r"^\s+jobid: (\d+)", block, re.M)
        if rule and jobid:
            rules[jobid.group(1)], started[jobid.group(1)] = rule.group(1), when
        for done in re.findall(r"Finished jobid: (\d+)", block):
            finished[done] = when
    return [(rules[j], started[j], finished[j]) for j in started if j in finished]


def busy_seconds(spans):
    """Seconds during which at least one of the (start, end) spans runs."""
    total, current_end = 0.0, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            total += (end - start).total_seconds()
            current_end = end
        elif end > current_end:
            total += (end - current_end).total_seconds()
            current_end = end
    return total


def run(ctx):
    workdir = ctx.folder("makespan")
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(shrunk_config(ctx.quick)))
    env = dict(os.environ, L2G_FAKE_GPUS="2", L2G_GPU_LOCK_DIR=str(workdir / "locks"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config_path), "--workflow-profile", str(REPO / "profiles" / "default"),
               "--cores", "8", "--resources", "gpu=2", "--", "results/demo/miou.json"]
    started = datetime.datetime.now()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    wall = (datetime.datetime.now() - started).total_seconds()
    if result.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{result.stderr[-3000:]}")
    jobs = job_times(result.stdout + result.stderr)
    gpu = [(start, end) for rule, start, end in jobs if rule in GPU_RULES]
    summed = sum((end - start).total_seconds() for start, end in gpu)
    busy = busy_seconds(gpu)
    parallel = summed / busy if busy else float("nan")
    return {"item": "makespan",
            "setup": {"command": "snakemake results/demo/miou.json --cores 8 --resources gpu=2 (L2G_FAKE_GPUS=2)",
                      "config": "demo shrunk, jobs as the voc section", "gpu_rules": GPU_RULES},
            "agree": True,
            "figures": {"gpu_jobs": len(gpu), "sum_of_gpu_job_s": summed, "gpu_busy_s": busy,
                        "mean_gpu_jobs_running": parallel, "wall_s": wall},
            "rows": [{"measure": f"{len(gpu)} GPU jobs, 2 pretended GPUs, --cores 8 (whole run {wall:.0f} s)",
                      "pipeline": f"sum {summed:.0f} s in {busy:.0f} s", "reference": "", "ratio": parallel,
                      "target": "", "met": None,
                      "check": f"{parallel:.2f} GPU jobs at once on average while any runs (2.00 = both always)"}]}
