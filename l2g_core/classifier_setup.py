"""The classifier a training stage (train-cls, train-l2g) starts from: its command-line options,
and how it is built fresh or loaded from a classifier file."""

import argparse
from pathlib import Path

from l2g_core.model_io import load_classifier
from l2g_core.models import BACKBONES, build_classifier


def add_model_arguments(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--backbone", choices=BACKBONES, default="small", help="backbone network")
    group.add_argument("--init", default=None,
                       help="backbone weights: a checkpoint path (e.g. the ImageNet ResNet-38 from l2g "
                            "convert-weights), a torchvision weights name (IMAGENET1K_V1), or scratch (random)")
    group.add_argument("--pcm", action=argparse.BooleanOptionalAction, default=False, help="pixel correlation module of the official model")
    group.add_argument("--output-stride", type=int, choices=(8, 16), default=8, help="feature stride")


def build_or_load(args, manifest):
    """The classifier a training stage starts from: the one in --init-from (frozen as it was
    trained), or a new one with fresh CAM layers on the backbone weights of --init."""
    if args.init_from:
        return load_classifier(args.init_from, class_names=manifest["class_names"])[0]
    return build_classifier(args.backbone, manifest["num_classes"], pcm=args.pcm, init=args.init,
                            output_stride=args.output_stride)


def init_file(init):
    """The --init file whose bytes a checkpoint's fingerprint must cover (None: a weights name)."""
    return init if init and Path(init).is_file() else None
