"""The markdown view of a benchmark run (docs/benchmarks.md) and its console table."""

TITLES = {
    "evaluator": "1. Evaluator",
    "export": "2. CAM export",
    "crf": "3. CRF",
    "train_step": "4. L2G training step",
    "scale": "5. Scale",
    "e2e": "6. End to end (demo)",
    "cam_storage": "7. CAM files at VOC size",
    "loader": "8. Data loaders against a GPU's appetite",
    "gpu_input": "8b. GPU input path (decode: gpu)",
    "makespan": "9. Two GPUs busy (makespan)",
    "gpu": "10. GPU check (python -m bench --gpu)",
}

METHOD = {
    "evaluator": (
        "Pipeline: `l2g evaluate --kind cam` (streaming, one pass per image for all thresholds), in process, on "
        "1 and on 2 worker threads. Reference (`bench/reference.py`, written in the style of the official "
        "`scripts/evaluate_mthr_voc.py`): for each threshold, for each image, read the ground truth and one 8-bit "
        "PNG per present class, stack the scores with the threshold as background, argmax, histogram. Both score "
        "the same CAMs over the default thresholds 0.05 ... 0.95: CAMs made deterministically from the ground truth "
        "plus smooth noise (not from a classifier), quantised to 8 bits so that the pipeline's files and "
        "the reference's PNGs hold the same values (`bench/common.py`)."),
    "export": (
        "Pipeline: `l2g export-cams` (images batched by size, each scale run once for the batch and its mirror "
        "image). Reference (style of the official `scripts/test_l2g_voc.py`): one image at a time, one forward "
        "pass per scale and per flip, maps moved to numpy, flipped back, summed, divided by their maximum, one "
        "8-bit PNG per present class. Model `build_classifier(\"small\", 6)`, random init (timing only); demo "
        "settings: 128 px, scales 0.5 1.0 1.5 with flip, batch 16. The check compares the pipeline's files "
        "(uint8, round(255 x)) with the reference's 8-bit PNGs: both round the same maps, so they agree within "
        "one level. Bytes per image depend on the CAMs' content (here those of a random-init "
        "model)."),
    "crf": (
        "`l2g refine` on 1 and 2 worker processes (forked pool), same CAM files (ground truth plus noise), "
        "threshold 0.3, IRN CRF parameters (10 iterations). The CRF step is `l2g_core.crf.refine_labels` on "
        "arrays in memory (scores, probabilities, unary, CRF, argmax); the bare call is pydensecrf alone "
        "(DenseCRF2D, setUnaryEnergy, the two pairwise terms, inference, argmax) on the same unary and image, "
        "precomputed."),
    "train_step": (
        "One update of both networks (forward, targets, loss, backward, SGD with the pipeline's parameter "
        "groups) at the demo size: batch 8, input 128, 4 crops of 64, small backbone, random init. Official "
        "formulation (saliency-gated targets, background channel, kd_weight 10, global classification loss "
        "computed but not added). Pipeline side: the `step` of `l2g train-l2g` (`crop_batch`, `local_targets`, "
        "`align_global`, `transfer_loss`). Reference (style of the official `scripts/train_l2g_sal_voc.py`): crops "
        "cut image by image, roi indices built per image, a loop over images to zero absent classes and a sort "
        "over classes with one-hot rows of an identity matrix to keep the winner. Where the official maths "
        "differs (roi_align alignment, saliency resizing, sort stability), the reference follows the pipeline "
        "so that both compute the same loss; `bench/reference.py` lists each difference."),
    "scale": (
        "Each stage command runs as the Snakemake rule runs it, in a fresh process under `bench/peak_rss.py` "
        "(ru_maxrss of its children: the largest single process, pool workers included). Images are smaller than "
        "the demo's so that 10,000 are generated and processed in minutes on 2 cores; export with the demo's "
        "scales and flip. Dry run: `snakemake -n` of the target on dataset `voc`, its root a VOC-layout folder of "
        "empty placeholder files (a dry run reads no image), in a scratch working directory; the check is that "
        "it succeeds and creates no output."),
    "e2e": (
        "Read from the Snakemake benchmark files of the last demo run (`results/demo/benchmarks/*.tsv`); the "
        "bench does not run the demo. The stages ran under Snakemake with `--cores 2`, some of them side by "
        "side, so their sum exceeds the run's wall time."),
    "cam_storage": (
        "CAMs of the demo's trained L2G model (`results/demo/l2g/model.pt`) on 48 demo train images warped to "
        "500 x 375 (VOC's usual size), the demo's export scales and flips, the present classes only; each image's "
        "maps written as `l2g export-cams` writes them (uint8 round(255 x), compressed `.npz`) and as the earlier "
        "format (float16, uncompressed `.npz`), interleaved; read back with `load_cams`; the CAM mIoU is the best "
        "of the threshold sweep (0.05 ... 0.95) against the ground truth resized with nearest."),
    "loader": (
        "One data-loader worker's samples per second (the dataset's `__getitem__` in this process: decode, "
        "augment, normalise) for the voc recipe's three training inputs on demo images scaled to 500 x 375: "
        "classifier and L2G (short side 512, 448 crop, official jitter; L2G adds the saliency crop), DeepLab "
        "(scale 0.5-1.5, 321 crop). Beside it, what one GPU trains per second at 40% of its dense bf16 peak "
        "(A100 312, H100/H200 989 TFLOP/s), from the FLOPs of one training sample counted by torch's "
        "`FlopCounterMode` on the meta device (forward and backward; ResNet-38 + PCM at 448; L2G adds the local "
        "network on 6 crops of 320; DeepLab-v2 ResNet-101 MSC at 321), and the workers that takes."),
    "gpu_input": (
        "The classifier and L2G inputs of item 8 (voc recipe: short side 512, 448 crop, official jitter; L2G "
        "adds the saliency crop) on the same VOC-sized JPEGs, made by the CPU path (`decode: cpu`: one loader "
        "worker decodes and augments with PIL) and by the GPU path (`decode: gpu`: the worker only reads the "
        "file bytes and the saliency PNG and draws the sample's random numbers; the training process decodes "
        "the batch with `torchvision.io.decode_jpeg` on the device and augments it with batched tensor ops, "
        "`l2g_core/data/gpu_augment.py`), in batches of the recipe's sizes (classifier 8, L2G 3), one torch "
        "thread. Samples/s per CPU core: the CPU path's worker rate; for the GPU path 1 / (the worker's "
        "seconds per sample + the training process's CPU seconds per sample in `device_batch`). Without CUDA "
        "the device step runs on the CPU device (one thread), which is the figure reported; on CUDA it costs "
        "the host only kernel launches (the GPU check measures that: `python -m bench --gpu`). The check: on "
        "the CPU device both paths make the same samples bit for bit (tests/test_gpu_augment.py)."),
    "makespan": (
        "The demo workflow shrunk (64 px, a few epochs) with the voc section's `jobs` (4 threads per GPU job), "
        "`snakemake results/demo/miou.json --cores 8 --resources gpu=2` with `L2G_FAKE_GPUS=2` (claims, "
        "devices and locks real; the computation on this CPU). From Snakemake's log (1 s resolution): the sum of "
        "the GPU jobs' run times against the time during which at least one ran; the ratio is the mean number "
        "of GPU jobs running while any does (2.00: both GPUs always busy). Not in `--quick` (a whole "
        "workflow run); tests/test_gpus.py checks the overlap."),
    "gpu": (
        "Runs only on a CUDA device (`python -m bench --gpu`, under 8 minutes; it adds its results to "
        "`bench/results.json` and its section here, the CPU items stay). Every part runs in the configuration "
        "the stages run in: the runtime set up as the stage sets it up (precision switches; cuDNN's kernel "
        "search for training only), the Trainer's channels-last models, optimizer groups and autocast, the "
        "layers the recipes freeze (BatchNorm and stem). (1) The L2G update of the voc recipe (ResNet-38 + PCM "
        "global and local networks, batch 3 at 448, 6 crops of 320, official targets) at precision fp32 "
        "(official), tf32 and bf16: s/update, TFLOP/s from the FLOPs of that very update (counted on the meta "
        "device) and the utilisation of the exact card's dense peak of that precision (H100 SXM/PCIe/NVL, "
        "H200, A100 SXM4/PCIe 40/80 GB by name and memory). (2) Two L2G updates (fp32, bf16), two DeepLab "
        "MSC micro-steps (ResNet-101, batch 5 at 321) and the CAM export's computation under "
        "`torch.cuda.set_sync_debug_mode(\"error\")`. (3) CAM export as `l2g export-cams` runs it (scales "
        "0.5-2 + flips, batch 4, 4 loader workers) in fp32 and bf16: images/s, the GPU's mean utilisation "
        "(nvidia-smi every 0.2 s), the largest bf16 - fp32 CAM difference. (4) Prediction as `l2g predict-seg` "
        "runs it (DeepLab-v2 ResNet-101 MSC, scale 1, fp32): images/s and utilisation. (5) `l2g with-gpus "
        "--ddp -- l2g train-cls --device cuda` with one process and, where two GPUs are visible, two "
        "(torchrun, NCCL). (6) The CUDA tests the CPU suite skips. (7) The GPU input path of item 8b with its "
        "device step on the card (nvjpeg decode, augmentation): samples/s per CPU core of the classifier input "
        "(batch 8) against what 40% of the card's bf16 peak trains (H100 SXM: about 160 samples/s), fed by 4 "
        "cores per GPU (a 2-GPU box with 8 cores), the device step's samples/s on the card, and the mean grey-"
        "level difference from the CPU path (JPEG decoders)."),
}


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip().replace("|", "\\|") if lines else ""


def fmt_ratio(value):
    if value is None:
        return ""
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def verdict(met):
    return {True: "met", False: "MISSED", None: ""}[met]


def table(results):
    lines = ["| item | measure | pipeline | baseline | ratio | target | result | check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        title = TITLES.get(result["item"], result["item"])
        if "error" in result:
            lines.append(f"| {title} | ERROR | | | | | failed | {last_line(result['error'])} |")
            continue
        for row in result["rows"]:
            cells = [title, row["measure"], row["pipeline"], row["reference"], fmt_ratio(row["ratio"]),
                     row["target"], verdict(row["met"]), row["check"]]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def findings(result):
    """Plain-language notes on a result: what a missed target comes from, measured."""
    item, f = result["item"], result.get("figures", {})
    notes = []
    if "error" in result:
        return [f"The item failed: `{last_line(result['error'])}`."]
    if not result.get("agree", True):
        notes.append("**The two sides did not compute the same result** (see `check` in the JSON); "
                     "the timings are not a fair comparison.")
    if item == "evaluator":
        notes.append(f"Pipeline {f['pipeline_images_per_s_1_worker']:.0f} images/s on 1 worker for all "
                     f"{len(result['setup']['thresholds'])} thresholds; the reference reads every image and every "
                     f"class PNG once per threshold ({f['reference_images_per_s']:.0f} images/s).")
        if f["speedup_2_workers"] < f["speedup_1_worker"]:
            notes.append(f"Two worker threads gain nothing at this size ({f['speedup_2_workers']:.1f}x against "
                         f"{f['speedup_1_worker']:.1f}x for one): the whole run takes "
                         f"{result['timing']['pipeline_1_worker']['median_s']:.2f} s, about "
                         f"{1000 / f['pipeline_images_per_s_1_worker']:.1f} ms per image.")
    if item == "export":
        p = f.get("profile")
        if p:
            pipe, ref = p["pipeline"], p["reference"]
            notes.append(f"Profile of one call each (cProfile): the convolutions take {pipe['conv2d_s']:.2f} s "
                         f"of {pipe['total_s']:.2f} s in the pipeline ({pipe['conv2d_calls']} calls) and "
                         f"{ref['conv2d_s']:.2f} s of {ref['total_s']:.2f} s in the reference "
                         f"({ref['conv2d_calls']} calls).")
            if f["speedup"] < 2.0:
                notes.append("Why batching gains little on the CPU: it does not reduce the work. Both sides "
                             "run the same convolutions over the same pixels, and they are most of the time; a "
                             "128 px image at batch 1 already keeps the CPU's cores busy, so batching saves only "
                             "the per-call overhead of the small ops. Batching pays on a GPU, where one image "
                             "leaves most of the device idle and every op is a kernel launch.")
        notes.append(f"Bytes per image: compressed uint8 `.npz` {f['bytes_per_image_npz']:,.0f} B against 8-bit "
                     f"PNGs {f['bytes_per_image_png_per_class']:,.0f} B: the same 8-bit values, zip against PNG "
                     f"compression.")
    if item == "crf":
        m = f["machine_scaling_2_processes"]
        notes.append(f"Scaling of `l2g refine` on 2 workers: {f['scaling_2_workers']:.2f}x; the same fork pool "
                     f"running a pure-CPU job at the same time (interleaved): {m:.2f}x, so the stage reaches "
                     f"{100 * f['scaling_2_workers'] / m:.0f}% of what the machine gave a second process.")
        if f["scaling_2_workers"] < 1.8 and m < 1.8:
            notes.append("Why the near-linear target is missed: the machine did not have a free second core. "
                         "Other work ran on its 2 cores during the bench (see the load averages), so a second "
                         "process mostly waits for a core; the workers share nothing (each image is read, "
                         "refined and written by one process) and the pool costs one fork.")
        notes.append(f"Per image: bare pydensecrf {f['bare_ms_per_image']:.1f} ms, CRF step "
                     f"{f['crf_step_ms_per_image']:.1f} ms ({100 * f['crf_step_overhead']:+.1f}%), whole stage on "
                     f"1 worker {f['stage_ms_per_image_1_worker']:.1f} ms ({100 * f['stage_overhead_1_worker']:+.1f}%: "
                     "JPEG and CAM file read, PNG written, manifest).")
    if item == "gpu_input":
        for kind, g in f.items():
            notes.append(f"{kind}: a worker of the GPU path reads and draws {g['gpu_path_worker_samples_per_s']:.0f} "
                         f"samples/s; the device step on {g['device']} makes "
                         f"{g['gpu_path_device_step_samples_per_s']:.1f} samples/s at "
                         f"{1000 * g['gpu_path_device_step_cpu_s_per_sample']:.0f} ms of host CPU per sample.")
        if result["setup"]["device"] == "cpu":
            notes.append("On the CPU device the GPU path is slower than PIL: the same integer arithmetic as "
                         "PIL's C loops, written as general tensor ops (gathers, float64 HSV), on one core. "
                         "Its point is the CUDA figure, where the host only launches kernels; it awaits a GPU.")
    if item == "train_step":
        parts = f.get("construction_parts_ms")
        if parts and parts["pipeline_crops"] > parts["reference_crops"]:
            notes.append(f"Crops: `crop_batch` (one advanced-indexing gather for all crops) takes "
                         f"{parts['pipeline_crops']:.2f} ms where cutting the crops one slice at a time and stacking "
                         f"them takes {parts['reference_crops']:.2f} ms; on the CPU, slices (memory copies) beat the "
                         f"gather's index arithmetic at this size. Targets: `local_targets` "
                         f"{parts['pipeline_targets']:.2f} ms against {parts['reference_targets']:.2f} ms.")
        notes.append(f"Step: pipeline {f['pipeline_step_ms']:.0f} ms, reference {f['reference_step_ms']:.0f} ms. "
                     f"Target construction alone (crops, rois, targets): pipeline {f['targets_pipeline_ms']:.2f} ms, "
                     f"reference {f['targets_reference_ms']:.2f} ms, that is "
                     f"{100 * f['targets_share_of_reference_step']:.1f}% of the reference step.")
        if f["speedup"] < 1.3:
            notes.append(f"Why the whole step gains little: both sides run the same forward and backward passes of "
                         f"the two networks, which are almost all of a step on the CPU; removing the reference's "
                         f"whole target-construction cost would make its step at most "
                         f"{f['max_speedup_from_targets_alone']:.2f}x faster. The vectorised construction matters where "
                         f"the per-image and per-crop Python loops grow (bigger batches, more crops, a GPU, where "
                         f"each small op is a kernel launch).")
        if "variants" in f and result["setup"]["device"] == "cuda":
            v = f["variants"]
            notes.append(f"GPU: bf16 autocast {v['bf16_autocast']['gain']:.2f}x, bf16 + channels-last "
                         f"{v['bf16_autocast_channels_last']['gain']:.2f}x the fp32 step.")
        elif result["setup"]["device"] != "cuda":
            notes.append("bf16 autocast and channels-last: not measured, no GPU on this machine "
                         "(the bench measures them when CUDA is available).")
    if item == "scale":
        runs = f["runs"]
        sizes = sorted(runs, key=int)
        gen = ", ".join(f"{int(n):,} images {runs[n]['make_synthetic_and_prepare_s']:.0f} s" for n in sizes)
        notes.append(f"Generating and preparing the synthetic data: {gen}.")
        for stage, model in f.get("wall_model", {}).items():
            what = "start-up and imports" + ("; loading the model" if stage == "export-cams" else "")
            fixed_s = (f"{model['fixed_s']:.1f} s of fixed cost per run ({what})" if model["fixed_s"] >= 1.0
                       else "a fixed cost per run too small to resolve")
            notes.append(f"`l2g {stage}`: {model['per_image_ms']:.3g} ms per image and {fixed_s}, from the wall "
                         f"times at the two sizes (one run each: noisy).")
        torch_stages = [s for s, v in f.get("imports_torch", {}).items() if v]
        if torch_stages and "evaluate" in f["rss_growth"]:
            rss = {s: runs[sizes[-1]][s]["max_rss_mib"] for s in f["rss_growth"]}
            notes.append("Peak RSS is mostly start-up: " + ", ".join(f"`l2g {s}` imports torch ({rss[s]:.0f} MiB)"
                                                                     for s in torch_stages if s in rss)
                         + f", `l2g evaluate` does not ({rss['evaluate']:.0f} MiB)."
                         + (" `l2g refine` needs no torch for the CRF, yet imports it at start-up, which costs "
                            "it that memory and seconds of fixed cost."
                            if "refine" in torch_stages else ""))
        for stage, growth in f["rss_growth"].items():
            if abs(growth) > 0.10:
                notes.append(f"`{stage}` grows {100 * growth:+.1f}% in peak RSS from {int(sizes[0]):,} to "
                             f"{int(sizes[-1]):,} images.")
        d = result["setup"]
        if f.get("dry_run_s"):
            jobs = {n: c["jobs"] for n, c in result["check"]["dry_runs"].items()}
            same = len(set(jobs.values())) == 1
            notes.append(f"Dry run target `{d['dry_run_target']}` (dataset voc): "
                         + ", ".join(f"{j} jobs at {int(n):,} ids" for n, j in jobs.items())
                         + (". The DAG does not grow with the number of images: each rule processes a whole "
                            "split or a fixed number of shards of it, so the dry-run time does not depend on "
                            "the dataset size." if same else "."))
            for failed in result["check"].get("failed_targets", {}):
                notes.append(f"The dry run of `{failed}` failed (see the JSON), so the next target was used.")
            if f.get("scontrol_s"):
                notes.append(f"Most of each dry run is Snakemake's start, not the DAG: with SLURM's tools on PATH, "
                             f"the SLURM executor plugin runs `scontrol show config` when Snakemake starts, which "
                             f"took {f['scontrol_s']:.1f} s here on its own (measured by the bench).")
    return notes


def describe_run(number, run, page_machine=None):
    items = "all items" if len(run["items"]) >= len(TITLES) - 1 else "items " + ", ".join(run["items"])
    where = run.get("machine")  # a run on another machine than the page's (the GPU check) says which
    if where and page_machine and (where["cpu"], where["gpu"]) != (page_machine["cpu"], page_machine["gpu"]):
        items += f" on another machine ({where['cores']} cores, {where['cpu']}, GPU: {where['gpu'] or 'none'})"
    return (f"{number}. `{run['command']}`: {run['date']}, {items}; {'quick' if run['quick'] else 'full'} mode, "
            f"warm-up {run['warmup']}, repeats {run['repeats']}, {run['threads']} torch threads, device "
            f"{run['device']}; {run['wall_s'] / 60:.1f} min; load average (1, 5, 15 min) "
            f"{run['load_average_at_start']} at start, {run['load_average_at_end']} at end")


# The comparisons whose per-round ratios are worth a word when they spread: (timing key, slow side, fast side).
PAIRS = {
    "evaluator": [("timing", "reference", "pipeline_1_worker")],
    "export": [("timing", "reference", "pipeline")],
    "crf": [("timing", "refine_1_worker", "refine_2_workers"), ("timing", "bare_pydensecrf", "crf_step")],
    "train_step": [("timing", "reference", "pipeline"), ("target_timing", "reference_crops", "pipeline_crops"),
                   ("target_timing", "reference_targets", "pipeline_targets")],
}


def noise_notes(result):
    """Where the per-round ratios of a comparison spread widely, say so (a busy machine)."""
    notes = []
    for key, a, b in PAIRS.get(result["item"], []):
        timing = result.get(key) or {}
        if a not in timing or b not in timing:
            continue
        ratios = [x / y for x, y in zip(timing[a]["times_s"], timing[b]["times_s"]) if y > 0]
        if len(ratios) > 1 and min(ratios) > 0 and max(ratios) / min(ratios) > 1.5:
            notes.append(f"Noise: the per-round ratio {a} / {b} ranged from {min(ratios):.2f} to {max(ratios):.2f} "
                         f"(ratio of the fastest runs {min(timing[a]['times_s']) / min(timing[b]['times_s']):.2f}).")
    return notes


def markdown(data):
    machine, runs = data["meta"]["machine"], data["meta"]["runs"]
    used = {result.get("run", 1) for result in data["results"]}
    gpu = machine["gpu"] or "none"
    lines = [
        "# Benchmarks",
        "",
        "Stage speed, memory and scaling of the pipeline, each side by side with the straightforward way the",
        "reference code does the same work, in the same process, on the same inputs. Written by `python -m bench`",
        "(`bench/`); rerun it rather than editing this file. Each comparison first checks that both sides",
        "computed the same result, then times them interleaved (A B, B A, ...) after warm-up and reports the",
        "medians and their ratio (baseline time / pipeline time: above 1 means the pipeline is faster).",
        "",
        (f"- Machine: {machine['cores']} cores ({machine['cores_usable']} usable), {machine['cpu']}, "
         f"{machine['memory_gib']} GiB RAM, GPU: {gpu}"),
        f"- Software: Python {machine['python']}, torch {machine['torch']}, numpy {machine['numpy']}",
        "- Commands (repository root, project virtualenv), each item names the run that measured it:",
        *[f"    {describe_run(n, run, machine)}" + ("" if n in used else " (superseded: its items were measured "
                                                               "again by a later run)")
          for n, run in enumerate(runs, 1)],
        ("- The machine is shared: other work (tests, training runs) used its cores during the bench, so "
         "absolute figures are noisy; the ratios come from interleaved runs, and the JSON keeps every "
         "repeat and the per-round ratios."),
        "",
        "## Summary",
        "",
        table(data["results"]),
        "",
        ("The JSON beside this table (`bench/results.json` by default) holds every timing (all repeats), "
         "the checks and the settings."),
        "",
        "## Items",
    ]
    for result in data["results"]:
        lines += ["", f"### {TITLES.get(result['item'], result['item'])}", ""]
        if result["item"] == "gpu":
            lines += gpu_targets() + [""]
        run = runs[result.get("run", 1) - 1]
        lines += [f"Run {result.get('run', 1)} ({run['date']}, {run['threads']} torch threads); load average "
                  f"{result.get('load_average_1min', {}).get('start')} at the item's start, "
                  f"{result.get('load_average_1min', {}).get('end')} at its end.", ""]
        if result["item"] in METHOD:
            lines += [METHOD[result["item"]], ""]
        lines += [f"- {note}" for note in findings(result) + noise_notes(result)]
    if not any(result["item"] == "gpu" for result in data["results"]):
        lines += ["", f"### {TITLES['gpu']}: not run yet", "",
                  "No GPU has been available to this work. What the check will measure, and the figure each "
                  "part must reach, ready for its first run (it fills this section and the summary table):", "",
                  *gpu_targets(), "", METHOD["gpu"]]
    return "\n".join(lines) + "\n"


def gpu_targets():
    """The GPU check's parts and the figure each must reach, as a table (bench.gpu.TARGETS)."""
    from bench.gpu import TARGETS

    return ["| part | must reach |", "| --- | --- |", *[f"| {part} | {target} |" for part, target in TARGETS]]
