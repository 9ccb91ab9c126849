"""Feature backbones for the CAM classifiers.

Every backbone is a :class:`Backbone`: ``forward(x)`` returns a feature map
``B x out_channels x H/stride x W/stride`` (for inputs whose sides are multiples of ``stride``),
and ``forward_features(x)`` returns ``{"out": that map, "low": ..., "mid": ...}`` where ``low``
and ``mid`` are the two intermediate feature maps (``pcm_channels`` channels) that the pixel
correlation module of the classifier uses, as the official L2G ResNet-38 uses ``conv4`` and
``conv5``.

Inputs are RGB images normalised with the ImageNet mean and std.

Initialisation (``init``): ``None`` or ``"scratch"`` (random), the name of torchvision ImageNet weights
(``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``; ResNet-50/101 only; fetched through the
torch hub cache, so they work where the cache or the internet has them), or the path of a local
torch checkpoint (see :mod:`l2g_core.models.checkpoint`) holding at least the backbone's
parameters; classification heads in it (``fc``, ``fc8``, ``f8_3``, ``f8_4``, ``f9``) are ignored.

With a pretrained init the backbone is frozen the official way (``freeze=None`` means "frozen iff
``init`` is given"): every BatchNorm keeps its statistics (eval mode even in ``train()``) and its
affine parameters are not trained, and the modules in ``frozen_names`` (the stem) get
``requires_grad=False``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from l2g_core.errors import L2GError
from l2g_core.models.checkpoint import load_state_dict_checked, read_state_dict

#: Checkpoint entries that belong to classification heads, ignored when initialising a backbone.
HEAD_PREFIXES = ("fc.", "fc8.", "f8_3.", "f8_4.", "f9.")

_WEIGHTS_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def resolve_init(init) -> tuple[str, object]:
    """Classify ``init``: ``("none", None)``, ``("path", Path)`` or ``("torchvision", name)``."""
    if init is None or init == "scratch":  # scratch: random weights, asked for explicitly
        return "none", None
    if isinstance(init, (str, os.PathLike)):
        path = Path(init)
        if path.is_file():
            return "path", path
        if isinstance(init, str) and _WEIGHTS_NAME.fullmatch(init):
            return "torchvision", init
        raise L2GError(f"{init}: init checkpoint file not found")
    raise L2GError(f"init {init!r}: expected None, a torchvision weights name or a checkpoint path")


class Backbone(nn.Module):
    """Base class: ``out_channels``, ``stride``, ``pcm_channels``, frozen-BN handling."""

    out_channels: int
    stride: int
    pcm_channels: tuple[int, int]
    #: modules (by attribute name) frozen with a pretrained init, as the official `not_training`.
    frozen_names: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.frozen = False

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["out"]

    def freeze_pretrained(self, stem: bool = True) -> None:
        """Freeze all BatchNorm layers (statistics and affine) and, with ``stem``, the modules of
        ``frozen_names`` (the official L2G classifiers freeze both; deeplab-pytorch trains its stem)."""
        self.frozen = True
        for name in self.frozen_names if stem else ():
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _init_from_path(self, path: Path) -> None:
        state = read_state_dict(path)
        load_state_dict_checked(self, state, source=str(path), ignore_unexpected=HEAD_PREFIXES)

    @staticmethod
    def _resolve_init(init, name: str, torchvision_ok: bool = False) -> tuple[str, object]:
        kind, value = resolve_init(init)
        if kind == "torchvision" and not torchvision_ok:
            raise L2GError(
                f"init {value}: torchvision weights exist only for resnet50/resnet101; "
                f"give {name} a checkpoint path"
            )
        return kind, value

    def _finish_init(self, kind: str, value, freeze: bool | None) -> None:
        """Apply a checkpoint-path init (torchvision weights are loaded by the subclass), freeze."""
        if kind == "path":
            self._init_from_path(value)
        if freeze is None:
            freeze = kind != "none"
        if freeze:
            self.freeze_pretrained()


class TorchvisionResNet(Backbone):
    """torchvision ResNet-50/101 without its pooling and fc, dilated to output stride 8 or 16.

    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a
    torchvision ResNet state dict initialises it directly. PCM features: ``layer2`` (512 ch) and
    ``layer3`` (1024 ch).
    """

    frozen_names = ("conv1", "bn1")
    _DILATION = {8: [False, True, True], 16: [False, False, True]}

    def __init__(self, depth: int = 50, *, output_stride: int = 8, init=None, freeze=None):
        super().__init__()
        name = f"resnet{depth}"
        if depth not in (50, 101):
            raise L2GError(f"{name}: unsupported depth (50 or 101)")
        if output_stride not in self._DILATION:
            raise L2GError(f"{name}: output_stride must be 8 or 16, not {output_stride}")
        kind, value = self._resolve_init(init, name, torchvision_ok=True)
        net = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=self._DILATION[output_stride]
        )
        if kind == "torchvision":
            net.load_state_dict(_torchvision_state_dict(name, value))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4,
        )
        self.out_channels = 2048
        self.stride = output_stride
        self.pcm_channels = (512, 1024)
        self._finish_init(kind, value, freeze)

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        low = self.layer2(x)
        mid = self.layer3(low)
        out = self.layer4(mid)
        return {"out": out, "low": low, "mid": mid}


def _torchvision_state_dict(arch: str, weights_name: str) -> dict:
    enum = torchvision.models.get_model_weights(arch)
    try:
        weights = enum[weights_name]
    except KeyError:
        known = ", ".join(enum.__members__)
        raise L2GError(
            f"init {weights_name}: unknown torchvision weights for {arch} (known: {known})"
        ) from None
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # no internet and not in the cache, corrupt download, ...
        msg = " ".join(str(exc).split())[:150]
        raise L2GError(
            f"init {weights_name}: could not load {weights} from {weights.url} "
            f"({type(exc).__name__}: {msg}); put the file in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints) or pass a checkpoint path"
        ) from None


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallBackbone(Backbone):
    """A light CNN for CPU demos (about 128 px inputs): 4 stages, widths 32-64-128-256, stride 8.

    Each stage is two 3x3 conv-BN-ReLU layers; stages 1-3 start with a stride-2 conv, stage 4
    keeps stride 8 (no dilation, no pooling, no global-context layer). Eight 3x3 convs with
    input-side strides 1, 2, 2, 4, 4, 8, 8, 8 give a theoretical receptive field of
    ``1 + 2 * (1+2+2+4+4+8+8+8) = 75`` px (``receptive_field``): an output at feature index
    ``i`` sees input rows ``8*i - 37 .. 8*i + 37``. Moderate on purpose: much larger and plain
    CAMs spread over the background instead of the distinctive object parts.
    About 1.2 M parameters and 0.38 GMAC per 128x128 image. PCM features: stage 2 (64 ch,
    stride 4) and stage 3 (128 ch, stride 8).
    """

    receptive_field = 75
    widths = (32, 64, 128, 256)

    def __init__(self, *, output_stride: int = 8, init=None, freeze=None):
        super().__init__()
        if output_stride != 8:
            raise L2GError(f"small: output_stride must be 8, not {output_stride}")
        kind, value = self._resolve_init(init, "small")
        w1, w2, w3, w4 = self.widths
        self.stage1 = nn.Sequential(_conv_bn_relu(3, w1, 2), _conv_bn_relu(w1, w1))
        self.stage2 = nn.Sequential(_conv_bn_relu(w1, w2, 2), _conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(_conv_bn_relu(w2, w3, 2), _conv_bn_relu(w3, w3))
        self.stage4 = nn.Sequential(_conv_bn_relu(w3, w4), _conv_bn_relu(w4, w4))
        self.out_channels = w4
        self.stride = 8
        self.pcm_channels = (w2, w3)
        self._finish_init(kind, value, freeze)

    def forward_features(self, x):
        low = self.stage2(self.stage1(x))
        mid = self.stage3(low)
        return {"out": self.stage4(mid), "low": low, "mid": mid}
