"""CAM classifiers: a backbone, a 1x1 CAM layer (``fc8``) and, optionally, the PCM.

Channel order of the CAM map: ``0 .. C-1`` are the foreground classes, channel ``C`` (the last)
is the background, as in the official L2G code.

``forward(x)`` returns ``{"logits": B x C, "cams": B x (C+1) x h x w}``; ``cams`` is the raw
output of the 1x1 conv (plus, with PCM, its refinement; no ReLU / softmax), ``logits`` the global
average of its foreground channels.

Pixel correlation module (``pcm=True``), as in the official L2G ``models/resnet38.py`` (from
SEAM): an affinity embedding is built from the input image resized to the feature size
(bilinear, align_corners=True) concatenated with 1x1 projections of two intermediate feature maps
(``f8_3``: low -> 64 ch and ``f8_4``: mid -> 128 ch, both on *detached* features, so the PCM does
not train the backbone through them), then ``f9`` (1x1, 195 -> 192). With ``e_i`` the
L2-normalised embedding at pixel ``i``, ``A_ij = ReLU(e_i . e_j)``, normalised so that each
column sums to one, and the refined CAM at pixel ``j`` is ``sum_i cam_i A_ij / sum_i A_ij``: an
affinity-weighted average of the CAM over pixels that look alike. The output CAM is
``cam + refined cam`` (the official ``featmap``), and the logits are pooled from it, so the PCM
also shapes the classification loss. The official code propagates the 4096-channel features and
then applies ``fc8``; because ``fc8`` is a bias-free 1x1 conv (linear), propagating the
(C+1)-channel CAM gives the same result far more cheaply, and that is what we do. The affinity
matrix is ``(h*w)^2`` per image (3136^2 at 448 px / stride 8).

The ResNet-38 classifier's ``state_dict`` uses the official names (``conv1a`` ... ``bn7``,
``fc8``, ``f8_3``, ``f8_4``, ``f9``) at top level: the classifier classes subclass their backbone
(as the official ``Net`` subclasses ``resnet38_base.Net``), so the official checkpoints load
without renaming. The torchvision ResNets keep torchvision's names (``conv1``, ``layer1`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l2g_core.models.backbones import Backbone, SmallBackbone, TorchvisionResNet
from l2g_core.models.resnet38 import ResNet38


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss (mean over classes and batch); ``labels`` B x C multi-hot."""
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))


def pixel_correlation(cams: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """Refine ``cams`` (B x K x h x w) with the affinities of ``embedding`` (B x D x h x w).

    Returns ``cams @ A`` with ``A_ij = ReLU(cos(e_i, e_j))`` normalised over ``i`` (see the
    module docstring); the official ``PCM`` up to the choice of what is propagated.
    """
    n, k, h, w = cams.shape
    if tuple(embedding.shape[-2:]) != (h, w):
        cams = F.interpolate(cams, embedding.shape[-2:], mode="bilinear", align_corners=True)
        h, w = embedding.shape[-2:]
    e = embedding.flatten(2)
    e = e / (torch.norm(e, dim=1, keepdim=True) + 1e-5)
    aff = F.relu(torch.matmul(e.transpose(1, 2), e))
    aff = aff / (aff.sum(dim=1, keepdim=True) + 1e-5)
    return torch.matmul(cams.reshape(n, k, h * w), aff).reshape(n, k, h, w)


def _resize_to(t: torch.Tensor, size) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size, mode="bilinear", align_corners=True)


class CAMClassifier(Backbone):
    """Head and forward pass shared by the classifiers; concrete classes mix in a backbone.

    Attributes: ``num_classes`` (C), ``use_pcm``, ``stride`` (feature stride), ``out_channels``
    (backbone feature channels), ``new_layer_names`` (the layers trained from scratch).
    """

    new_layer_names = ("fc8", "f8_3", "f8_4", "f9")

    def _init_head(self, num_classes: int, pcm: bool) -> None:
        self.num_classes = int(num_classes)
        self.use_pcm = bool(pcm)
        self.fc8 = nn.Conv2d(self.out_channels, self.num_classes + 1, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        if self.use_pcm:
            low, mid = self.pcm_channels
            self.f8_3 = nn.Conv2d(low, 64, 1, bias=False)
            self.f8_4 = nn.Conv2d(mid, 128, 1, bias=False)
            self.f9 = nn.Conv2d(192 + 3, 192, 1, bias=False)
            nn.init.kaiming_normal_(self.f8_3.weight)
            nn.init.kaiming_normal_(self.f8_4.weight)
            nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def pcm_embedding(self, x: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The affinity embedding ``f9([image, f8_3(low), f8_4(mid)])`` at the feature size."""
        size = feats["out"].shape[-2:]
        parts = [
            _resize_to(x, size),
            _resize_to(self.f8_3(feats["low"].detach()), size),
            _resize_to(self.f8_4(feats["mid"].detach()), size),
        ]
        return self.f9(torch.cat(parts, dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.forward_features(x)
        cams = self.fc8(feats["out"])
        if self.use_pcm:
            cams = cams + pixel_correlation(cams, self.pcm_embedding(x, feats))
        logits = cams[:, :-1].mean(dim=(2, 3))
        return {"logits": logits, "cams": cams}

    def param_groups(self) -> tuple[list, list, list, list]:
        """The official SGD groups: (pretrained weights 1x, pretrained biases 2x,
        new-layer weights 10x, new-layer biases 20x); trainable parameters only, each once.

        New layers are ``fc8`` and the PCM layers. BatchNorm scales count as weights and BN
        shifts as biases (in the official setting BN is frozen and in no group at all).
        """
        new_ids = {
            id(p)
            for name in self.new_layer_names
            if hasattr(self, name)
            for p in getattr(self, name).parameters()
        }
        groups: tuple[list, list, list, list] = ([], [], [], [])
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            index = (2 if id(p) in new_ids else 0) + (1 if name.endswith("bias") else 0)
            groups[index].append(p)
        return groups


class ResNet38CAM(CAMClassifier, ResNet38):
    """ResNet-38 CAM classifier with the official L2G parameter names."""

    def __init__(self, num_classes: int, *, pcm: bool = False, init=None, freeze=None,
                 output_stride: int = 8):
        ResNet38.__init__(self, output_stride=output_stride, init=init, freeze=freeze)
        self._init_head(num_classes, pcm)


class ResNetCAM(CAMClassifier, TorchvisionResNet):
    """torchvision ResNet-50/101 CAM classifier (torchvision names + ``fc8``)."""

    def __init__(self, num_classes: int, *, depth: int = 50, pcm: bool = False, init=None,
                 freeze=None, output_stride: int = 8):
        TorchvisionResNet.__init__(self, depth, output_stride=output_stride, init=init,
                                   freeze=freeze)
        self._init_head(num_classes, pcm)


class SmallCAM(CAMClassifier, SmallBackbone):
    """The light demo CAM classifier (see :class:`SmallBackbone`)."""

    def __init__(self, num_classes: int, *, pcm: bool = False, init=None, freeze=None,
                 output_stride: int = 8):
        SmallBackbone.__init__(self, output_stride=output_stride, init=init, freeze=freeze)
        self._init_head(num_classes, pcm)
