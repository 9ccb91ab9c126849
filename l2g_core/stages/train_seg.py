"""`l2g train-seg`: DeepLab-v2 trained on the pseudo labels (or, for the fully supervised
reference, on the ground-truth masks of the same images with the same budget).

As deeplab-pytorch's main.py trains it: random scaling, crop and flip (SegmentationCrops); cross
entropy with 255 ignored, summed over the MSC outputs (segmentation_loss); SGD with momentum,
weight decay (none on the ASPP biases) and the poly schedule, 10x/20x on the ASPP head; the
budget in iterations (optimizer updates of batch_size x accumulate images) as DeepLab counts it.
"""

import argparse
from pathlib import Path

from l2g_core.data.torch_data import MEAN, SegmentationCrops
from l2g_core.errors import L2GError
from l2g_core.model_io import save_segmenter
from l2g_core.models.deeplab import (
    CAFFE_BGR_MEAN,
    DEFAULT_MSC_SCALES,
    DEFAULT_RATES,
    LOSS_RESOLUTIONS,
    build_deeplab,
    refuse_coco_trained,
    segmentation_loss,
)
from l2g_core.shards import MANIFEST, read_manifest
from l2g_core.training import Trainer, add_training_arguments, start_training

BACKBONES = ("resnet101", "resnet50", "small")


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--out", required=True, help="model file to write (results/{dataset}/seg/model.pt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="folder of pseudo labels ID.png with its manifest.json (l2g refine)")
    source.add_argument("--ground-truth", action="store_true",
                        help="train on the ground-truth masks instead (the fully supervised reference)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default="resnet101", help="backbone (default resnet101)")
    model.add_argument("--init", default=None,
                       help="initial weights: a torchvision weights name (IMAGENET1K_V1), a torch file of "
                            "backbone parameters or an l2g classifier, or a deeplab-pytorch DeepLab-v2 file")
    model.add_argument("--output-stride", type=int, choices=(8, 16), default=8, help="feature stride (default 8)")
    model.add_argument("--aspp-rates", type=int, nargs="+", default=list(DEFAULT_RATES),
                       help="ASPP dilations (default 6 12 18 24)")
    model.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True,
                       help="keep a pretrained backbone's BatchNorm frozen (DeepLab's choice; default on)")
    model.add_argument("--msc", action=argparse.BooleanOptionalAction, default=False,
                       help="multi-scale (MSC) training: also 0.5x and 0.75x inputs, max-fused")
    model.add_argument("--msc-scales", type=float, nargs="+", default=list(DEFAULT_MSC_SCALES),
                       help="extra input scales of MSC (default 0.5 0.75)")
    model.add_argument("--loss-resolution", choices=LOSS_RESOLUTIONS, default="logits",
                       help="logits (deeplab-pytorch): labels resized (nearest) to each output; "
                            "labels: outputs upsampled to the labels")
    data = parser.add_argument_group("augmentation")
    data.add_argument("--crop-size", type=int, default=321, help="square training crop (default 321)")
    scaling = data.add_mutually_exclusive_group()
    scaling.add_argument("--scales", type=float, nargs="+", default=None,
                         help="random scaling by one of these factors (deeplab-pytorch: 0.5 0.75 1.0 1.25 1.5)")
    scaling.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                         help="random scaling by a factor drawn uniformly from LOW..HIGH")
    add_training_arguments(parser)


def check_args(args):
    if args.crop_size < 16:
        raise L2GError(f"--crop-size must be at least 16, got {args.crop_size}")
    if args.scales is None and args.scale_range is None:
        args.scales = [0.5, 0.75, 1.0, 1.25, 1.5]  # deeplab-pytorch's DATASET.SCALES
    if args.scales is not None and min(args.scales) <= 0:
        raise L2GError("--scales must be positive factors")
    if args.scale_range is not None and not 0 < args.scale_range[0] <= args.scale_range[1]:
        low, high = args.scale_range
        raise L2GError(f"--scale-range {low:g} {high:g}: need 0 < LOW <= HIGH")
    if not args.aspp_rates or min(args.aspp_rates) < 1:
        raise L2GError("--aspp-rates must be positive dilations")
    if args.msc and (not args.msc_scales or min(args.msc_scales) <= 0):
        raise L2GError("--msc-scales must be positive numbers")


def check_labels(folder, ids):
    """The pseudo-label folder is complete (its manifest, written last, exists) and covers the split."""
    folder = Path(folder)
    read_manifest(folder / MANIFEST)  # written last: without it the labels are incomplete
    missing = [i for i in ids if not (folder / f"{i}.png").is_file()]
    if missing:
        raise L2GError(f"{folder / (missing[0] + '.png')}: pseudo label missing ({len(missing)} of "
                       f"{len(ids)} training images have none)")


def run(args):
    check_args(args)
    manifest, settings, runtime = start_training(args, "train-seg")
    if args.ground_truth and not manifest["splits"]["train"]["has_ground_truth"]:
        raise L2GError(f"{args.manifest}: the train split has no ground-truth masks for --ground-truth")
    refuse_coco_trained(args.init, manifest["kind"])
    model = build_deeplab(args.backbone, manifest["num_classes"] + 1, rates=args.aspp_rates,
                          msc_scales=args.msc_scales if args.msc else None, init=args.init,
                          output_stride=args.output_stride, freeze_bn=args.freeze_bn)
    # pad with the mean the model subtracts (Caffe's for Caffe weights), so that padding reads as 0
    pad_rgb = CAFFE_BGR_MEAN[::-1] if model.build_args["caffe"] else tuple(255 * MEAN)
    dataset = SegmentationCrops(manifest, "train", args.crop_size, labels_dir=args.labels, scales=args.scales,
                                scale_range=args.scale_range, pad_rgb=pad_rgb, seed=settings.seed)
    if args.labels:
        check_labels(args.labels, dataset.ids)
    labels = "ground truth" if args.ground_truth else str(Path(args.labels).resolve())
    describe = {"stage": "seg", "model": model.build_args, "init": args.init, "labels": labels,
                "crop_size": args.crop_size, "scales": args.scales, "scale_range": args.scale_range,
                "loss_resolution": args.loss_resolution}
    inputs = [args.manifest, args.labels and Path(args.labels) / MANIFEST,
              args.init if args.init and Path(args.init).is_file() else None]
    trainer = Trainer({"model": model}, dataset, settings, runtime, Path(args.out).parent, describe, inputs)

    def step(batch, generator):
        outputs = trainer.wrapped["model"](batch["image"])
        return {"loss": segmentation_loss(outputs, batch["label"], resolution=args.loss_resolution)}

    trainer.fit(step)
    if runtime.is_main:
        save_segmenter(args.out, model, class_names=manifest["class_names"],
                       settings={**describe, **vars(settings), "precision_applied": runtime.applied_precision},
                       trained_on={"dataset": manifest["name"], "split": "train", "labels": labels})
        print(f"wrote {args.out}")
