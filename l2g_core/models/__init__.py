"""Models: backbones, CAM classifiers (with optional PCM) and checkpoint loading.

>>> model = build_classifier("small", 20, pcm=True)
>>> out = model(images)            # {"logits": B x 20, "cams": B x 21 x H/8 x W/8}
>>> loss = classification_loss(out["logits"], labels)
>>> optimizer = torch.optim.SGD(
...     [{"params": g, "lr": lr * m} for g, m in zip(model.param_groups(), (1, 2, 10, 20))],
...     momentum=0.9, weight_decay=5e-4, nesterov=True)
"""

from __future__ import annotations

from l2g_core.errors import L2GError
from l2g_core.models.backbones import Backbone, SmallBackbone, TorchvisionResNet
from l2g_core.models.checkpoint import (
    LoadReport,
    extract_state_dict,
    load_state_dict_checked,
    load_weights,
    read_state_dict,
)
from l2g_core.models.classifier import (
    CAMClassifier,
    ResNet38CAM,
    ResNetCAM,
    SmallCAM,
    classification_loss,
    pixel_correlation,
)
from l2g_core.models.resnet38 import ResNet38

BACKBONES = ("resnet38", "resnet50", "resnet101", "small")

__all__ = [
    "BACKBONES", "Backbone", "CAMClassifier", "LoadReport", "ResNet38", "ResNet38CAM",
    "ResNetCAM", "SmallBackbone", "SmallCAM", "TorchvisionResNet", "build_backbone",
    "build_classifier", "classification_loss", "extract_state_dict", "load_state_dict_checked",
    "load_weights", "pixel_correlation", "read_state_dict",
]


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise L2GError(f"backbone {backbone!r}: unknown (choose from {', '.join(BACKBONES)})")


def build_backbone(backbone: str, *, init=None, output_stride: int = 8, freeze=None) -> Backbone:
    """A bare backbone: ``forward(x)`` gives ``B x out_channels x H/stride x W/stride``.

    ``init``: None, torchvision weights name (resnet50/101) or checkpoint path; ``freeze``:
    None = freeze stem and BatchNorm iff ``init`` is given (see :mod:`.backbones`).
    """
    _check_backbone(backbone)
    if backbone == "resnet38":
        return ResNet38(output_stride=output_stride, init=init, freeze=freeze)
    if backbone == "small":
        return SmallBackbone(output_stride=output_stride, init=init, freeze=freeze)
    return TorchvisionResNet(int(backbone[6:]), output_stride=output_stride, init=init,
                             freeze=freeze)


def build_classifier(
    backbone: str,
    num_classes: int,
    *,
    pcm: bool = False,
    init=None,
    output_stride: int = 8,
    freeze=None,
) -> CAMClassifier:
    """A CAM classifier with ``num_classes`` foreground classes (+1 background channel).

    ``init`` initialises the backbone only (the new layers start fresh); to restore a whole
    classifier use :func:`load_weights`. The returned model has ``build_args`` (a dict of these
    arguments, handy to store beside its checkpoints).
    """
    _check_backbone(backbone)
    if int(num_classes) < 1:
        raise L2GError(f"num_classes must be at least 1, not {num_classes}")
    kwargs = dict(pcm=pcm, init=init, freeze=freeze, output_stride=output_stride)
    if backbone == "resnet38":
        model = ResNet38CAM(num_classes, **kwargs)
    elif backbone == "small":
        model = SmallCAM(num_classes, **kwargs)
    else:
        model = ResNetCAM(num_classes, depth=int(backbone[6:]), **kwargs)
    model.build_args = {
        "backbone": backbone,
        "num_classes": int(num_classes),
        "pcm": bool(pcm),
        "output_stride": int(output_stride),
        # a classifier rebuilt from its file (model_io) is frozen exactly as it was trained
        "freeze": bool(model.frozen),
    }
    return model
