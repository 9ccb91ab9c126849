"""Item 4: one L2G training update, the pipeline's vectorised step against the official style
(crops cut image by image, per-image loop to zero absent classes, sort over classes; bench.reference).

Both sides start from the same weights (`build_classifier("small", 6)`, random init, global and
local networks alike, as stage 2 starts both from stage 1), take the same batch of synthetic images
with saliency and the same crop boxes, and run forward, targets, loss, backward and an SGD update
(the pipeline's optimizer: official parameter groups, nesterov). Demo size: batch 8, input 128,
4 crops of 64. The formulation is the official one (saliency-gated targets with the local
network's background channel, kd_weight 10, global classification loss computed but not added);
the pipeline side runs `l2g_core.stages.train_l2g.l2g_losses`, the step's own loss, with those options.

Check: the same loss to 1e-5 (and the same targets). No speed target on a CPU, where the two
networks' convolutions are almost all of a step on both sides. The target construction alone (crops, rois, targets) is also timed
on both sides, to show which share of the step it is. On a GPU the pipeline step is also timed
with bf16 autocast and with bf16 autocast plus the channels-last memory format.
"""

import contextlib
import copy
from types import SimpleNamespace

from bench.common import interleaved, ratio, synthetic_dataset
from bench.reference import reference_crops, reference_rois, reference_step, reference_targets
from l2g_core.data.manifest import load_manifest

TOLERANCE = 1e-5
KD_WEIGHT = 10.0


# The official formulation, as train-l2g options.
OFFICIAL = {"use_saliency": True, "background": "channel", "bg_score": 0.3, "bg_thr": 1e-3, "kd_weight": KD_WEIGHT,
            "ignore_empty": False, "global_cls_weight": 0.0, "roi_align": "legacy", "saliency_resize": "nearest"}


def pipeline_losses(net_g, net_l, batch, boxes, num_crops):
    """The loss terms of the pipeline's step (train_l2g.l2g_losses, official options)."""
    from l2g_core.stages.train_l2g import l2g_losses

    # read from the boxes here (the stage takes it from its settings): this step reads its losses
    # back below anyway, so one more read costs the comparison nothing
    crop_size = int(boxes[0, 0, 2] - boxes[0, 0, 0])
    options = SimpleNamespace(num_crops=num_crops, crop_size=crop_size, **OFFICIAL)
    return l2g_losses(net_g, net_l, batch, boxes, options, net_g.stride)


def pipeline_step(net_g, net_l, optimizer, batch, boxes, num_crops, autocast=None):
    with autocast or contextlib.nullcontext():
        losses = pipeline_losses(net_g, net_l, batch, boxes, num_crops)
    losses["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in losses.items()}


def vectorised_crops(local_cams, batch, boxes, num_crops):
    import torch.nn.functional as F

    from l2g_core.l2g import boxes_to_rois, crop_batch

    crop_size = int(boxes[0, 0, 2] - boxes[0, 0, 0])
    crops = crop_batch(batch["image"], boxes, crop_size)
    sal = F.interpolate(crop_batch(batch["saliency"], boxes, crop_size), size=local_cams.shape[-2:])
    return crops, sal, batch["label"].repeat_interleave(num_crops, dim=0), boxes_to_rois(boxes)


def official_crops(local_cams, batch, boxes, num_crops):
    import torch.nn.functional as F

    boxes = boxes.cpu()
    crops = reference_crops(batch["image"], boxes)
    sal = F.interpolate(reference_crops(batch["saliency"], boxes), size=local_cams.shape[-2:])
    return crops, sal, batch["label"], reference_rois(boxes)


def vectorised_targets(local_cams, batch, boxes, num_crops):
    """Crops, saliency crops, rois and targets, the pipeline's way."""
    from l2g_core.l2g import local_targets

    crops, sal, labels, rois = vectorised_crops(local_cams, batch, boxes, num_crops)
    return crops, rois, local_targets(local_cams, labels, sal, background="channel")


def official_targets(local_cams, batch, boxes, num_crops):
    """The same, the official way."""
    crops, sal, labels, rois = official_crops(local_cams, batch, boxes, num_crops)
    return crops, rois, reference_targets(local_cams, labels, num_crops, sal)


def make_batch(ctx, batch_size, input_size, pool, size):
    import torch

    from l2g_core.data.torch_data import ImageOptions, LabelledImages

    manifest = load_manifest(synthetic_dataset(ctx, pool, size))
    still = ImageOptions(resize="warp", jitter=(0, 0, 0, 0), saliency_norm="none")  # no random draws
    dataset = LabelledImages(manifest, "train", input_size, saliency=True, options=still, seed=0)
    samples = [dataset[i] for i in range(batch_size)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "label", "saliency")}
    return {k: v.to(ctx.device) for k, v in batch.items()}


def run(ctx):
    import torch

    from l2g_core.l2g import sample_boxes
    from l2g_core.models import build_classifier
    from l2g_core.training import build_optimizer

    if ctx.quick:
        batch_size, input_size, crop_size, num_crops, pool, size, steps = 2, 48, 24, 2, 12, 48, 1
    else:
        batch_size, input_size, crop_size, num_crops, pool, size, steps = 8, 128, 64, 4, 300, 128, 3
    device = torch.device(ctx.device)
    batch = make_batch(ctx, batch_size, input_size, pool, size)
    boxes = sample_boxes(batch_size, num_crops, crop_size, input_size, torch.Generator().manual_seed(0)).to(device)
    torch.manual_seed(0)
    base = build_classifier("small", 6).to(device)
    settings = SimpleNamespace(lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def fresh(channels_last=False):
        net_g, net_l = copy.deepcopy(base), copy.deepcopy(base)
        if channels_last:
            net_g, net_l = net_g.to(memory_format=torch.channels_last), net_l.to(memory_format=torch.channels_last)
        net_g.train()
        net_l.train()
        return net_g, net_l, build_optimizer([net_g, net_l], settings)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Check before timing: same targets, same loss after one update from the same weights.
    with torch.no_grad():
        local_cams = base(reference_crops(batch["image"], boxes))["cams"].float()
    vec = vectorised_targets(local_cams, batch, boxes, num_crops)
    ref = official_targets(local_cams, batch, boxes, num_crops)
    target_diff = max(float((a.float() - b.float().to(a.device)).abs().max()) for a, b in zip(vec, ref))
    pipe_losses = pipeline_step(*fresh(), batch, boxes, num_crops)
    ref_losses = reference_step(*fresh(), batch, boxes, kd_weight=KD_WEIGHT, stride=base.stride)
    loss_diff = max(abs(pipe_losses[k] - ref_losses[k]) for k in ("loss", "kd", "cls_local", "cls_global"))
    agree = loss_diff <= TOLERANCE and target_diff <= TOLERANCE

    pipe_state, ref_state = fresh(), fresh()

    def run_pipeline():
        for _ in range(steps):
            pipeline_step(*pipe_state, batch, boxes, num_crops)
        sync()

    def run_reference():
        for _ in range(steps):
            reference_step(*ref_state, batch, boxes, kd_weight=KD_WEIGHT, stride=base.stride)
        sync()

    timing = interleaved({"pipeline": run_pipeline, "reference": run_reference}, warmup=ctx.warmup,
                         repeats=ctx.repeats)
    pipe_s, ref_s = timing["pipeline"]["median_s"] / steps, timing["reference"]["median_s"] / steps
    speedup = ratio(ref_s, pipe_s)

    loops = 5 if ctx.quick else 50

    def loop(fn):
        def call():
            for _ in range(loops):
                fn(local_cams, batch, boxes, num_crops)
            sync()
        return call

    sal = vectorised_crops(local_cams, batch, boxes, num_crops)[1]
    crop_labels = batch["label"].repeat_interleave(num_crops, dim=0)

    def pipeline_targets_only(*_):
        from l2g_core.l2g import local_targets
        return local_targets(local_cams, crop_labels, sal, background="channel")

    def reference_targets_only(*_):
        return reference_targets(local_cams, batch["label"], num_crops, sal)

    target_timing = interleaved({"pipeline_crops": loop(vectorised_crops), "reference_crops": loop(official_crops),
                                 "pipeline_targets": loop(pipeline_targets_only),
                                 "reference_targets": loop(reference_targets_only)},
                                warmup=ctx.warmup, repeats=ctx.repeats)
    part = {name: 1000 * target_timing[name]["median_s"] / loops for name in
            ("pipeline_crops", "reference_crops", "pipeline_targets", "reference_targets")}
    vec_s = (part["pipeline_crops"] + part["pipeline_targets"]) / 1000
    off_s = (part["reference_crops"] + part["reference_targets"]) / 1000
    # The most the reference step could gain if its whole target construction cost nothing.
    bound = ref_s / (ref_s - off_s) if ref_s > off_s else float("inf")

    rows = [
        {"measure": f"images/s, batch {batch_size}, input {input_size}, {num_crops} crops of {crop_size} "
                    f"({ctx.device})",
         "pipeline": f"{batch_size / pipe_s:.3g} img/s", "reference": f"{batch_size / ref_s:.3g} img/s",
         "ratio": speedup, "target": "", "met": None,
         "check": f"max |dloss| {loss_diff:.1e} (<= {TOLERANCE:g})"},
        {"measure": "target construction alone (crops, rois, targets)",
         "pipeline": f"{1000 * vec_s:.3g} ms", "reference": f"{1000 * off_s:.3g} ms", "ratio": ratio(off_s, vec_s),
         "target": "", "met": None,
         "check": f"{100 * off_s / ref_s:.1f}% of the reference step; max |dtarget| {target_diff:.1e}"},
        {"measure": "of which crops, saliency crops, rois", "pipeline": f"{part['pipeline_crops']:.3g} ms",
         "reference": f"{part['reference_crops']:.3g} ms",
         "ratio": ratio(part["reference_crops"], part["pipeline_crops"]),
         "target": "", "met": None, "check": "crop_batch (one gather) vs slicing crop by crop"},
        {"measure": "of which targets", "pipeline": f"{part['pipeline_targets']:.3g} ms",
         "reference": f"{part['reference_targets']:.3g} ms",
         "ratio": ratio(part["reference_targets"], part["pipeline_targets"]), "target": "", "met": None,
         "check": "local_targets vs per-image loop + sort"},
    ]
    figures = {"speedup": speedup, "pipeline_images_per_s": batch_size / pipe_s,
               "reference_images_per_s": batch_size / ref_s, "pipeline_step_ms": 1000 * pipe_s,
               "reference_step_ms": 1000 * ref_s, "targets_pipeline_ms": 1000 * vec_s,
               "targets_reference_ms": 1000 * off_s, "targets_share_of_reference_step": off_s / ref_s,
               "max_speedup_from_targets_alone": bound, "construction_parts_ms": part}

    if device.type == "cuda":
        variants = precision_variants(ctx, device, fresh, batch, boxes, num_crops, steps, sync)
        figures["variants"] = variants
        for name in ("bf16_autocast", "bf16_autocast_channels_last"):
            rows.append({"measure": f"pipeline step with {name.replace('_', ' ')} vs fp32 (cuda)",
                         "pipeline": f"{variants[name]['images_per_s']:.3g} img/s",
                         "reference": f"{variants['fp32']['images_per_s']:.3g} img/s (fp32)",
                         "ratio": variants[name]["gain"], "target": "", "met": None,
                         "check": f"loss {variants[name]['loss']:.4g} vs {variants['fp32']['loss']:.4g}"})
    return {
        "item": "train_step",
        "setup": {"batch_size": batch_size, "input_size": input_size, "crop_size": crop_size, "num_crops": num_crops,
                  "steps_per_timed_call": steps, "device": ctx.device, "kd_weight": KD_WEIGHT,
                  "formulation": "official: saliency-gated targets, background channel, no global cls loss",
                  "model": "small, 6 classes, random init"},
        "agree": agree,
        "check": {"max_abs_loss_diff": loss_diff, "max_abs_target_diff": target_diff, "tolerance": TOLERANCE,
                  "pipeline_losses": pipe_losses, "reference_losses": ref_losses},
        "timing": timing,
        "target_timing": target_timing,
        "figures": figures,
        "rows": rows,
    }


def precision_variants(ctx, device, fresh, batch, boxes, num_crops, steps, sync):
    """The pipeline step in fp32, with bf16 autocast, and with bf16 autocast + channels-last."""
    import torch

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    batch_cl = dict(batch, image=batch["image"].contiguous(memory_format=torch.channels_last))
    setups = {"fp32": (fresh(), batch, None), "bf16_autocast": (fresh(), batch, autocast),
              "bf16_autocast_channels_last": (fresh(channels_last=True), batch_cl, autocast)}
    losses = {}
    for name, (state, b, ac) in setups.items():  # the first update of each, from the same weights
        losses[name] = pipeline_step(*copy.deepcopy(state), b, boxes, num_crops, autocast=ac() if ac else None)["loss"]

    def side(state, b, ac):
        def call():
            for _ in range(steps):
                pipeline_step(*state, b, boxes, num_crops, autocast=ac() if ac else None)
            sync()
        return call

    timing = interleaved({name: side(*setup) for name, setup in setups.items()}, warmup=ctx.warmup,
                         repeats=ctx.repeats)
    batch_size = len(batch["image"])
    fp32 = timing["fp32"]["median_s"]
    return {name: {"images_per_s": batch_size * steps / t["median_s"], "gain": fp32 / t["median_s"],
                   "loss": losses[name], "median_s": t["median_s"]} for name, t in timing.items()
            if name in setups}
