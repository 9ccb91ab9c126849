"""ResNet-38 ("resnet38d"): the wide ResNet of Wu et al. used by PSA and L2G.

Written to have exactly the parameter names and shapes of the official code (L2G
``models/resnet38_base.py``, identical to PSA ``network/resnet38d.py``), so that weights converted
from the released MXNet ImageNet model and the released L2G checkpoints load unchanged:

==========  =====================================================  ============  ========
module      block                                                  out channels  stride
==========  =====================================================  ============  ========
conv1a      3x3 conv, 3 -> 64                                      64            1
b2, b2_1-2  ResBlock (stride 2 in b2), mid 128                     128           2
b3, b3_1-2  ResBlock (stride 2 in b3), mid 256                     256           4
b4, b4_1-5  ResBlock (stride 2 in b4), mid 512                     512           8
b5, b5_1-2  ResBlock, mid 512, dilation 2 (b5: first conv dil. 1)  1024          8
b6          bottleneck ResBlockBot, dilation 4, dropout 0.3        2048          8
b7          bottleneck ResBlockBot, dilation 4, dropout 0.5        4096          8
bn7         BatchNorm + ReLU on the output                         4096          8
==========  =====================================================  ============  ========

Blocks are pre-activation: ``bn_branch2a`` + ReLU first; the shortcut ``conv_branch1`` (1x1,
only where the shape changes) takes that activated input. ``conv4`` (the activated input of b5,
512 ch) and ``conv5`` (the activated input of b6, 1024 ch) are the features the PCM uses.
The pretrained-init freeze follows the official L2G classifier: ``conv1a``, ``b2``, ``b2_1``,
``b2_2`` and every BatchNorm are frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l2g_core.errors import L2GError
from l2g_core.models.backbones import Backbone


class ResBlock(nn.Module):
    """Wide pre-activation block: 3x3 (stride, first_dilation) then 3x3 (dilation)."""

    def __init__(self, in_ch, mid_ch, out_ch, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        self.same_shape = in_ch == out_ch and stride == 1
        first = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(
            in_ch, mid_ch, 3, stride, padding=first, dilation=first, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(
            mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False
        )
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x, return_act: bool = False):
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        out = shortcut + y
        return (out, act) if return_act else out


class ResBlockBot(nn.Module):
    """Bottleneck pre-activation block 1x1 -> 3x3 (dilation) -> 1x1, dropout before 2b1/2b2."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        # The official block always has (and always uses) the projection shortcut.
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x, return_act: bool = False):
        act = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        out = shortcut + y
        return (out, act) if return_act else out


class ResNet38(Backbone):
    """ResNet-38 trunk, output stride 8, 4096 output channels (see the module docstring)."""

    frozen_names = ("conv1a", "b2", "b2_1", "b2_2")

    def __init__(self, *, output_stride: int = 8, init=None, freeze=None):
        super().__init__()
        if output_stride != 8:
            raise L2GError(f"resnet38: output_stride must be 8, not {output_stride}")
        kind, value = self._resolve_init(init, "resnet38")
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)

        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)

        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)

        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)

        self.b5 = ResBlock(512, 512, 1024, stride=1, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)

        self.b6 = ResBlockBot(1024, 2048, stride=1, dilation=4, dropout=0.3)
        self.b7 = ResBlockBot(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

        self.out_channels = 4096
        self.stride = 8
        self.pcm_channels = (512, 1024)
        self._finish_init(kind, value, freeze)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1a(x)
        for block in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2,
                      self.b4, self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5):
            x = block(x)
        x, conv4 = self.b5(x, return_act=True)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6(x, return_act=True)
        conv6 = F.relu(self.bn7(self.b7(x)))
        return {"out": conv6, "low": conv4, "mid": conv5}
