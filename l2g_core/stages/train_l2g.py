"""`l2g train-l2g`: stage 2, local-to-global attention transfer (L2G).

A global network sees the whole image, a local network sees `num_crops` crops of it (four in the
corners, the rest random, as the official VOC loader draws them). As in the official code, both
start from the backbone weights of --init (the ImageNet ResNet-38) with fresh CAM and PCM layers;
--init-from starts both from a classifier file instead (the stage-1 classifier). The local CAMs
on the crops become targets (l2g_core.l2g) that the global CAMs under the same boxes are pulled
to. Only the global network is used afterwards.
"""

import argparse
from pathlib import Path

import torch.nn.functional as F

from l2g_core.classifier_setup import add_model_arguments, build_or_load, init_file
from l2g_core.data.torch_data import LabelledImages
from l2g_core.errors import L2GError
from l2g_core.l2g import ROI_ALIGN_MODES, align_global, crop_batch, local_targets, sample_boxes, transfer_loss
from l2g_core.model_io import save_classifier
from l2g_core.models import classification_loss
from l2g_core.runtime import to_device
from l2g_core.saliency import add_saliency_dir_argument, maps_record
from l2g_core.shards import MANIFEST
from l2g_core.training import (
    Trainer,
    add_image_arguments,
    add_training_arguments,
    image_options_from_args,
    own_rows,
    start_training,
)

BACKGROUNDS = ("channel", "channel_score", "threshold", "saliency", "complement")


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--init-from", default=None,
                        help="start both networks from this classifier (results/{dataset}/cls/model.pt) "
                             "instead of fresh ones on --init (the official start)")
    parser.add_argument("--out", required=True, help="model file to write (results/{dataset}/l2g/model.pt)")
    add_model_arguments(parser)
    group = parser.add_argument_group("L2G")
    group.add_argument("--input-size", type=int, required=True, help="global input: images resized to this square")
    group.add_argument("--crop-size", type=int, required=True, help="side of each local crop, in input pixels")
    group.add_argument("--num-crops", type=int, required=True, help="crops per image")
    group.add_argument("--crop-layout", choices=("corners", "random"), default="corners",
                       help="corners (official): four crops in the image corners, the rest random; "
                            "random: every crop at a random position")
    group.add_argument("--kd-weight", type=float, default=10.0, help="weight of the transfer loss (VOC 10, COCO 30)")
    group.add_argument("--use-saliency", action=argparse.BooleanOptionalAction, default=True,
                       help="gate the targets with the saliency maps (Sal/); off: background from the CAM")
    group.add_argument("--global-cls-weight", type=float, default=0.0,
                       help="weight of the global network's classification loss (0 = official: computed, never added)")
    group.add_argument("--background", choices=BACKGROUNDS, default="channel",
                       help="background of the targets: the local network's own background channel "
                            "(official VOC), the same keeping its score (official COCO), the constant "
                            "--bg-score, the saliency map alone (1 - saliency), or 1 - the winning class's "
                            "score (times the saliency with --use-saliency)")
    group.add_argument("--bg-score", type=float, default=0.3,
                       help="background score with --background threshold (CAM threshold)")
    group.add_argument("--bg-thr", type=float, default=1e-3,
                       help="with saliency, a winning score at or below this gives no target (official "
                            "bg_thr: VOC 0.001, COCO 0.1)")
    group.add_argument("--ignore-empty", action=argparse.BooleanOptionalAction, default=False,
                       help="leave pixels whose target is all zero out of the transfer loss (official: kept)")
    group.add_argument("--roi-align", choices=ROI_ALIGN_MODES, default="legacy",
                       help="legacy (official): torchvision's aligned=False sampling, half a feature "
                            "pixel off; aligned: feature pixel centres")
    group.add_argument("--saliency-resize", choices=("nearest", "area"), default="nearest",
                       help="saliency crops to the CAM size: nearest (official F.interpolate default) "
                            "or area (the mean of each cell)")
    group.add_argument("--saliency-norm", choices=("max", "none"), default="max",
                       help="divide each saliency map by its maximum (official) or keep it as stored")
    add_saliency_dir_argument(group, "--use-saliency")
    add_image_arguments(parser)
    add_training_arguments(parser)


def check_args(args):
    if args.num_crops < 1:
        raise L2GError(f"--num-crops must be at least 1, got {args.num_crops}")
    if args.crop_layout == "corners" and args.num_crops < 4:
        raise L2GError(f"--crop-layout corners needs --num-crops 4 or more, got {args.num_crops}")
    if not 0 < args.crop_size <= args.input_size:
        raise L2GError(f"--crop-size {args.crop_size} must be positive and at most --input-size {args.input_size}")
    if args.background == "saliency" and not args.use_saliency:
        raise L2GError("--background saliency needs --use-saliency")
    if args.kd_weight < 0 or args.global_cls_weight < 0:
        raise L2GError("--kd-weight and --global-cls-weight must be >= 0")


def l2g_losses(net_g, net_l, batch, boxes, options, stride):
    """The loss terms of one L2G step on `batch` with crop `boxes`; `options` holds crop_size,
    num_crops, use_saliency, saliency_resize, background, bg_score, bg_thr, roi_align, kd_weight,
    ignore_empty and global_cls_weight.

    Nothing here reads a device value back to the host (tests/test_no_host_sync.py holds it to
    that): the sizes come from `options`, and boxes drawn on the host are queued to the device
    (to_device)."""
    images, labels = batch["image"], batch["label"]
    boxes = to_device(boxes, images.device)
    out_g = net_g(images)
    out_l = net_l(crop_batch(images, boxes, options.crop_size))
    size = out_l["cams"].shape[-2:]
    crop_labels = labels.repeat_interleave(options.num_crops, dim=0)
    saliency = None
    if options.use_saliency:
        saliency = F.interpolate(crop_batch(batch["saliency"], boxes, options.crop_size), size=size,
                                 mode=options.saliency_resize)
    targets = local_targets(out_l["cams"].detach().float(), crop_labels, saliency,
                            background=options.background, bg_score=options.bg_score, bg_thr=options.bg_thr)
    probs = align_global(out_g["cams"].float(), boxes, size, stride, options.roi_align)
    kd = options.kd_weight * transfer_loss(probs, targets, ignore_empty=options.ignore_empty)
    cls_local = classification_loss(out_l["logits"].float(), crop_labels)
    cls_global = classification_loss(out_g["logits"].float(), labels)
    loss = kd + cls_local + options.global_cls_weight * cls_global
    return {"loss": loss, "kd": kd, "cls_local": cls_local, "cls_global": cls_global}


def step_boxes(batch_size, options, generator, runtime):
    """This process's crop boxes of one step, on its device.

    Drawn on the host for the whole global batch, so that the boxes of an image do not depend on
    the process count (own_rows keeps this process's rows), then queued to the device from
    pinned memory without making the host wait (to_device)."""
    boxes = sample_boxes(batch_size * runtime.world_size, options.num_crops, options.crop_size, options.input_size,
                         generator, corners=options.crop_layout == "corners")
    return to_device(own_rows(boxes, runtime).contiguous(), runtime.device)


L2G_OPTIONS = ("input_size", "crop_size", "num_crops", "crop_layout", "kd_weight", "use_saliency",
               "global_cls_weight", "background", "bg_score", "bg_thr", "ignore_empty", "roi_align",
               "saliency_resize", "saliency_norm", "resize", "short_side", "crop_axes", "flip", "jitter",
               "jitter_formula", "image_stats", "decode")


def run(args):
    check_args(args)
    images = image_options_from_args(args, saliency_norm=args.saliency_norm)
    manifest, settings, runtime = start_training(args, "train-l2g")
    global_net = build_or_load(args, manifest)
    local_net = build_or_load(args, manifest)
    if args.crop_size % global_net.stride:
        raise L2GError(f"--crop-size {args.crop_size} must be a multiple of the feature stride {global_net.stride}")
    dataset = LabelledImages(manifest, "train", args.input_size, saliency=args.use_saliency,
                             saliency_dir=args.saliency_dir, options=images, seed=settings.seed)
    start = {"init_from": str(Path(args.init_from).resolve())} if args.init_from else \
        {"model": global_net.build_args, "init": args.init}
    # where the maps came from (ROOT/Sal, or the pipeline's with their source), recorded with the model
    maps = maps_record(dataset.layout) if args.use_saliency else None
    describe = {"stage": "l2g", **start, **{k: getattr(args, k) for k in L2G_OPTIONS}, "saliency_maps": maps}
    if maps is not None:
        print(f"saliency maps: {maps['dir']} (source {maps['source']})", flush=True)
    made_maps = dataset.layout.saliency_dir / MANIFEST  # maps made by the pipeline: new maps, a new run
    trainer = Trainer({"global": global_net, "local": local_net}, dataset, settings, runtime,
                      Path(args.out).parent, describe,
                      inputs=[args.manifest, args.init_from, init_file(args.init),
                              made_maps if args.use_saliency and made_maps.is_file() else None])
    net_g, net_l = trainer.wrapped["global"], trainer.wrapped["local"]

    def step(batch, generator):
        boxes = step_boxes(len(batch["image"]), args, generator, runtime)
        return l2g_losses(net_g, net_l, batch, boxes, args, global_net.stride)

    trainer.fit(step)
    if runtime.is_main:
        save_classifier(args.out, global_net, stage="l2g", class_names=manifest["class_names"],
                        settings={**describe, **vars(settings), "precision_applied": runtime.applied_precision},
                        extra={"local_state_dict": local_net.state_dict()})
        print(f"wrote {args.out}")
