"""DeepLab-v2 as WSSS papers train it on pseudo labels: a dilated backbone and an ASPP head.

``DeepLabV2`` = backbone at output stride 8 (ResNet-101 for VOC/COCO, the light ``small`` one for
the demo) + ``ASPP``: four parallel 3x3 convolutions with dilations 6/12/18/24 whose outputs are
*summed* (DeepLab-v2; no BatchNorm, no image pooling: that is v3). ``forward(x)`` returns logits
``B x L x H/8 x W/8`` for L labels (background + C classes).

``MSC`` is the multi-scale training variant of deeplab-pytorch: the network also sees the input at
0.5x and 0.75x; in training it returns every scale's logits plus their element-wise maximum (each
gets a loss), in evaluation only the maximum.

Initialisation (``init`` of :func:`build_deeplab`), documented for users in the README:

* ``None``: random backbone;
* a torchvision weights name (``IMAGENET1K_V1``/``V2``; resnet50/101): ImageNet backbone;
* a path to a torch file holding the backbone parameters under our names (a torchvision ResNet
  state dict, or a classifier written by ``l2g train-cls`` whose backbone is reused);
* a path to a file converted by deeplab-pytorch from Caffe, in any layout its converters and
  trainer write: the DeepLab-v1 ResNet-101 init (``deeplabv1_resnet101-coco.pth`` that L2G uses
  for VOC, ``-imagenet.pth`` for COCO: ``layer1..layer5`` and a classifier ``fc`` of 91 COCO or
  1000 ImageNet classes, no ASPP), or a DeepLab-v2 with its ASPP (``aspp.cN`` or
  ``aspp.stages.cN``), MSC-wrapped (``base.``, or ``scale.`` before deeplab-pytorch 1.0) or not.
  It is loaded as deeplab-pytorch's main.py loads it (``model.base.load_state_dict(state,
  strict=False)``): the backbone, renamed to ours (:func:`convert_deeplab_pytorch`), must be
  complete; ``fc`` is dropped; the ASPP is kept when its label count matches, else it starts fresh
  (normal, std 0.01, as deeplab-pytorch's ``_ASPP``); an unknown key is an error. What loaded,
  what was dropped and what starts fresh is printed (:class:`InitReport`). The model switches to
  the Caffe conventions those weights need: BGR input in 0..255 minus the Caffe mean, stride 2 in
  the first 1x1 convolution of a stage, ceil-mode max pooling.

Checkpoints trained on PASCAL VOC val (DeepLab's ``train2_iter_20000``: train2 = trainval_aug)
are refused (:func:`refuse_val_trained`): a val mIoU of a model started from them is inflated.
For a COCO dataset the COCO-pretrained DeepLab (``deeplabv1_resnet101-coco.pth``, trained on COCO
masks) is refused for the same reason (:func:`refuse_coco_trained`); deeplab-pytorch's COCO recipe
starts from ImageNet (``deeplabv1_resnet101-imagenet.pth``).

As deeplab-pytorch trains it (``main.py``, ``libs/models/resnet.py``): a pretrained backbone keeps
every BatchNorm frozen but trains its stem convolution; the first block of a dilated stage has the
stage's dilation (torchvision gives it the previous one); SGD groups 1x (backbone), 10x (ASPP
weights) and 20x (ASPP biases, no weight decay); the MSC losses are summed, each against the
labels resized (nearest) to its logits (:func:`segmentation_loss`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from l2g_core.data.torch_data import MEAN as IMAGENET_MEAN, STD as IMAGENET_STD  # what normalise() applies
from l2g_core.errors import L2GError
from l2g_core.models.backbones import HEAD_PREFIXES, Backbone, resolve_init
from l2g_core.models.checkpoint import extract_state_dict, load_state_dict_checked, read_checkpoint
from l2g_core.runtime import to_device

DEFAULT_RATES = (6, 12, 18, 24)
DEFAULT_MSC_SCALES = (0.5, 0.75)
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
#: Names and metadata values that mark weights trained on VOC val.
VAL_TRAINED_NAMES = re.compile(r"train2_iter_\d+", re.IGNORECASE)
VAL_SPLITS = {"val", "trainval", "trainval_aug", "train2"}


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: sum of dilated 3x3 convs ``c0``, ``c1``, ..."""

    def __init__(self, in_channels: int, num_labels: int, rates=DEFAULT_RATES):
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        for index, rate in enumerate(self.rates):
            conv = nn.Conv2d(in_channels, num_labels, 3, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{index}", conv)

    def forward(self, x):
        return sum(getattr(self, f"c{i}")(x) for i in range(len(self.rates)))


class DeepLabV2(nn.Module):
    """Backbone + ASPP; ``caffe=True`` feeds the backbone Caffe-style input (see module doc)."""

    #: weight decay per parameter group: deeplab-pytorch gives the ASPP biases (20x) none.
    decay_multipliers = (1.0, 1.0, 1.0, 0.0)

    def __init__(self, backbone: Backbone, num_labels: int, rates=DEFAULT_RATES, caffe: bool = False):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, num_labels, rates)
        self.stride = backbone.stride
        self.caffe = caffe
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("caffe_mean", torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if self.caffe:  # our inputs are ImageNet-normalised RGB; Caffe weights want BGR 0..255 - mean
            rgb = (x * self.imagenet_std + self.imagenet_mean) * 255.0
            x = rgb.flip(1) - self.caffe_mean
        return self.aspp(self.backbone(x))

    def param_groups(self):
        """The DeepLab SGD groups: backbone weights 1x, backbone biases 2x, ASPP weights 10x,
        ASPP biases 20x (trainable parameters only; frozen BatchNorm is in none)."""
        groups = ([], [], [], [])
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups[(2 if name.startswith("aspp.") else 0) + name.endswith("bias")].append(p)
        return groups


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (training: a list of logits, evaluation: the fused one)."""

    def __init__(self, base: DeepLabV2, scales=DEFAULT_MSC_SCALES):
        super().__init__()
        self.base = base
        self.scales = tuple(float(s) for s in scales)
        self.stride = base.stride

    def forward(self, x):
        logits = self.base(x)
        size = logits.shape[-2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([logits, *resized]).amax(dim=0)
        return [logits, *pyramid, fused] if self.training else fused

    decay_multipliers = DeepLabV2.decay_multipliers

    def param_groups(self):
        return self.base.param_groups()


LOSS_RESOLUTIONS = ("logits", "labels")


@functools.lru_cache(maxsize=64)
def nearest_indices(size_in, size_out, device=torch.device("cpu")):
    """The source index of each of `size_out` samples when PIL's NEAREST resizes `size_in` of them,
    as a tensor on `device`.

    deeplab-pytorch resizes the labels with PIL; PIL's fixed-point arithmetic picks a different
    neighbour than torch's 'nearest-exact' for a few percent of the pixels, so the indices are
    taken from PIL itself (resizing an image of its own row numbers). Cached per device: a copy to
    the GPU at every MSC output (8 per micro-step) would make the host wait each time; the first
    one is queued without waiting (to_device)."""
    ramp = Image.fromarray(np.arange(size_in, dtype=np.float32)[:, None])
    picked = np.asarray(ramp.resize((1, size_out), resample=Image.NEAREST))[:, 0]
    return to_device(torch.from_numpy(picked.astype(np.int64)), device)


def resize_labels(labels, size):
    """Label maps (B, H, W) resized to `size` exactly as deeplab-pytorch's resize_labels (PIL
    NEAREST), without leaving the labels' device."""
    (height, width), (out_h, out_w) = labels.shape[-2:], size
    rows = nearest_indices(height, out_h, labels.device)
    cols = nearest_indices(width, out_w, labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


def segmentation_loss(outputs, labels, ignore_index=255, resolution="logits"):
    """Cross entropy of one logit map or the sum over a list of them (MSC: every scale and their
    maximum), as deeplab-pytorch's main.py sums it.

    resolution "logits" (deeplab-pytorch): the labels are resized (nearest) to each logit map;
    "labels": each logit map is upsampled (bilinear) to the labels, a loss at full resolution.
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = 0.0
    for logits in outputs:
        logits = logits.float()
        if resolution == "logits":
            total = total + F.cross_entropy(logits, resize_labels(labels, logits.shape[-2:]), ignore_index=ignore_index)
        else:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            total = total + F.cross_entropy(logits, labels, ignore_index=ignore_index)
    return total


# --- checkpoints -----------------------------------------------------------------------------


def refuse_val_trained(path, obj=None):
    """L2GError if the file's name or its metadata says it was trained on VOC val."""
    name = Path(path).name
    reason = None
    if VAL_TRAINED_NAMES.search(name):
        reason = f"its name ({name}) is DeepLab's model trained on train2 = trainval_aug"
    elif isinstance(obj, dict):
        trained_on = obj.get("trained_on") if isinstance(obj.get("trained_on"), dict) else {}
        split = obj.get("split", trained_on.get("split"))
        if isinstance(split, str) and split.lower() in VAL_SPLITS:
            reason = f"its metadata says it was trained on split {split!r}"
    if reason:
        raise L2GError(f"{path}: refusing to initialise DeepLab from it: {reason}, which includes the "
                       "VOC val images, so a val mIoU would be inflated; use ImageNet weights or the "
                       "COCO-pretrained init (deeplabv1_resnet101-coco.pth)")


_DLP_BLOCK = re.compile(r"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|proj|shortcut)\.(conv|bn)\.(.+)$")
_DLP_UNIT = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
             "proj": ("downsample.0", "downsample.1"), "shortcut": ("downsample.0", "downsample.1")}
# The wrappers deeplab-pytorch's files carry: MSC's `base.` (trained models, the VOC conversion of
# convert.py) or `scale.` (its MSC before v1.0); DataParallel's `module.` is stripped on reading.
_DLP_WRAPPERS = ("base.", "scale.")
_DLP_ASPP = re.compile(r"^aspp\.(?:stages\.)?c(\d+)\.(weight|bias)$")


def _unwrapped(key):
    for wrapper in _DLP_WRAPPERS:
        if key.startswith(wrapper):
            return key[len(wrapper):]
    return key


def is_deeplab_pytorch(state_dict) -> bool:
    return any(_unwrapped(k).startswith("layer1.conv1.conv.") for k in state_dict)


def convert_deeplab_pytorch(state_dict):
    """deeplab-pytorch names -> ours; returns (converted, dropped).

    ``layer1.conv1.{conv,bn}`` -> ``backbone.{conv1,bn1}``; ``layer{k}.block{j}.{reduce,conv3x3,
    increase}.{conv,bn}`` -> ``backbone.layer{k-1}.{j-1}.{conv,bn}{1,2,3}``; ``proj``/``shortcut``
    -> ``downsample.{0,1}``; ``aspp[.stages].cN`` -> ``aspp.cN``. ``dropped`` lists the file's
    classifier ``fc.*`` (the DeepLab-v1 init's 91 COCO classes, or ImageNet's 1000), which
    deeplab-pytorch's main.py never loads (``model.base.load_state_dict(..., strict=False)``).
    Any other name is an error.
    """
    out, dropped = {}, []
    for original, value in state_dict.items():
        key = _unwrapped(original)
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("fc."):
            dropped.append(original)
        elif key.startswith("layer1.conv1."):
            part, rest = key[len("layer1.conv1."):].split(".", 1)
            out[f"backbone.{'conv1' if part == 'conv' else 'bn1'}.{rest}"] = value
        elif match := _DLP_BLOCK.match(key):
            layer, block, unit, kind, rest = match.groups()
            conv, bn = _DLP_UNIT[unit]
            out[f"backbone.layer{int(layer) - 1}.{int(block) - 1}.{conv if kind == 'conv' else bn}.{rest}"] = value
        elif match := _DLP_ASPP.match(key):
            out[f"aspp.c{match.group(1)}.{match.group(2)}"] = value
        else:
            raise L2GError(f"deeplab-pytorch checkpoint: unexpected parameter {original}")
    return out, dropped


@dataclass
class InitReport:
    """What a deeplab-pytorch file gives a DeepLab of ours: its layout, the parameters loaded from
    it (our names), the file's keys left out, and our parameters that start fresh."""

    layout: str
    loaded: list
    dropped: list
    fresh: list

    def summary(self, source):
        fresh = ", ".join(self.fresh) or "none"
        return (f"{source}: {self.layout}: {len(self.loaded)} tensors loaded; dropped "
                f"{', '.join(self.dropped) or 'nothing'}; fresh: {fresh}")


def _layout(state, dropped, converted):
    wrapped = any(k.startswith(_DLP_WRAPPERS) for k in state)
    if "aspp.c0.weight" in converted:
        kind = f"deeplab-pytorch DeepLab-v2 ResNet-101 (ASPP of {converted['aspp.c0.weight'].shape[0]} labels)"
    elif dropped:
        fc = next(state[k] for k in dropped if k.endswith("weight"))
        kind = f"deeplab-pytorch DeepLab-v1 ResNet-101 (fc of {fc.shape[0]} classes, no ASPP)"
    else:
        kind = "deeplab-pytorch ResNet-101 backbone"
    return kind + (", MSC-wrapped" if wrapped else "")


def _split_for(model, converted, dropped, state):
    """(backbone state, ASPP state or None, InitReport) of a converted file for `model`: an ASPP of
    another label count is dropped and the model's starts fresh, as deeplab-pytorch's would."""
    aspp = {k: v for k, v in converted.items() if k.startswith("aspp.")}
    body = {k[len("backbone."):]: v for k, v in converted.items() if k.startswith("backbone.")}
    fits = bool(aspp) and aspp["aspp.c0.weight"].shape == model.aspp.c0.weight.shape
    if aspp and not fits:
        dropped = dropped + sorted(k for k in state if _DLP_ASPP.match(_unwrapped(k)))
    fresh = [] if fits else [f"aspp.{name}" for name, _ in model.aspp.named_parameters()]
    loaded = sorted(k for k in converted if fits or k.startswith("backbone."))
    report = InitReport(_layout(state, dropped, converted), loaded, dropped, fresh)
    return body, ({k[len("aspp."):]: v for k, v in aspp.items()} if fits else None), report


#: File names of DeepLab weights trained on COCO masks (deeplab-pytorch's COCO-pretrained init).
COCO_TRAINED_NAMES = re.compile(r"coco", re.IGNORECASE)


def refuse_coco_trained(path, dataset_kind):
    """L2GError when a COCO dataset would start DeepLab from weights trained on COCO masks."""
    if dataset_kind == "coco" and path is not None and COCO_TRAINED_NAMES.search(Path(str(path)).name):
        raise L2GError(f"{path}: refusing to initialise DeepLab from it for a COCO dataset: its name says it "
                       "was trained on COCO segmentation masks, a supervision leak; use the ImageNet init "
                       "(deeplab-pytorch's deeplabv1_resnet101-imagenet.pth) as coco_resnet_dplv2.yaml does")


def dilate_first_blocks(backbone) -> None:
    """Give the first block of each dilated stage its stage's dilation, as DeepLab-v2 does
    (deeplab-pytorch _ResLayer: every block of layer4/layer5 at 2/4); torchvision keeps the
    previous stage's dilation in that block."""
    for layer in (backbone.layer3, backbone.layer4):
        dilation = layer[-1].conv2.dilation
        layer[0].conv2.dilation = layer[0].conv2.padding = dilation


def make_caffe_resnet(backbone) -> None:
    """Turn a torchvision ResNet into the Caffe one DeepLab's weights were trained in: the stride
    of a stage's first block sits on its 1x1 ``conv1`` (torchvision puts it on the 3x3 ``conv2``),
    and the stem's max pooling rounds up."""
    backbone.maxpool.ceil_mode = True
    for layer in (backbone.layer2, backbone.layer3, backbone.layer4):
        first = layer[0]
        stride = first.conv2.stride
        if stride != (1, 1):
            first.conv1.stride, first.conv2.stride = stride, (1, 1)


# --- building ----------------------------------------------------------------------------------


def build_deeplab(backbone: str, num_labels: int, *, rates=DEFAULT_RATES, msc_scales=None, init=None,
                  output_stride: int = 8, caffe: bool | None = None, freeze_bn: bool = True, quiet: bool = False):
    """A DeepLab-v2 (wrapped in :class:`MSC` when ``msc_scales`` is given) with ``build_args``.

    ``caffe=None`` decides from ``init`` (a deeplab-pytorch file means Caffe conventions); a model
    rebuilt from its own file passes the stored value. ``freeze_bn``: a pretrained backbone keeps
    its BatchNorm statistics and affine parameters (DeepLab's choice for batches of 10 crops);
    False trains them, which suits a small backbone with larger batches. An init file's
    InitReport (what loaded, what was dropped, what starts fresh) is printed (unless ``quiet``)
    and kept as ``model.init_report``.
    """
    from l2g_core.models import build_backbone

    kind, value = resolve_init(init)
    state = None
    if kind == "path":  # read once: checked for val training, then renamed or loaded as it is
        obj = read_checkpoint(value)
        refuse_val_trained(value, obj)
        state = extract_state_dict(obj, str(value))
    dlp = state is not None and is_deeplab_pytorch(state)
    if dlp and backbone not in ("resnet50", "resnet101"):
        raise L2GError(f"{value}: a deeplab-pytorch (Caffe ResNet) checkpoint needs backbone resnet101, "
                       f"not {backbone}")
    caffe = dlp if caffe is None else caffe
    body = build_backbone(backbone, init=value if kind == "torchvision" else None,
                          output_stride=output_stride, freeze=False)
    if backbone != "small":
        dilate_first_blocks(body)
    if caffe:
        make_caffe_resnet(body)
    model = DeepLabV2(body, num_labels, rates, caffe=caffe)
    model.init_report = None
    if dlp:
        model.init_report = _load_deeplab_pytorch(model, state, source=str(value))
    elif state is not None:  # backbone parameters under our names; classifier heads ignored
        load_state_dict_checked(body, state, source=str(value), ignore_unexpected=HEAD_PREFIXES)
        model.init_report = InitReport("a backbone under our names",
                                       sorted(f"backbone.{k}" for k in state if k in body.state_dict()),
                                       sorted(k for k in state if k.startswith(HEAD_PREFIXES)),
                                       [f"aspp.{name}" for name, _ in model.aspp.named_parameters()])
    if model.init_report is not None and not quiet:
        print(f"DeepLab init {model.init_report.summary(value)}", flush=True)
    if kind != "none" and freeze_bn:  # deeplab-pytorch: BatchNorm frozen, the stem trained
        body.freeze_pretrained(stem=False)
    if msc_scales:
        model = MSC(model, msc_scales)
    model.build_args = {"backbone": backbone, "num_labels": int(num_labels), "rates": [int(r) for r in rates],
                        "msc_scales": [float(s) for s in msc_scales] if msc_scales else None,
                        "output_stride": int(output_stride), "caffe": bool(caffe), "freeze_bn": bool(freeze_bn)}
    return model


def _load_deeplab_pytorch(model, state, source):
    """The backbone (every parameter, strictly) and, when its label count matches, the ASPP of a
    deeplab-pytorch file; says what was dropped and what starts fresh."""
    converted, dropped = convert_deeplab_pytorch(state)
    body, aspp, report = _split_for(model, converted, dropped, state)
    load_state_dict_checked(model.backbone, body, source=source)
    if aspp is not None:
        load_state_dict_checked(model.aspp, aspp, source=source)
    return report


def inspect_deeplab_init(path, num_labels):
    """The InitReport of an init file for a ResNet-101 DeepLab-v2 of `num_labels` labels: which
    keys load, which are dropped, which of ours start fresh (l2g doctor); L2GError for a file that
    cannot start one."""
    return build_deeplab("resnet101", num_labels, init=str(path), quiet=True).init_report
