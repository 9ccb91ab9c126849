"""deeplab-pytorch's networks, re-created for the tests from its source as L2G vendors it
(PengtaoJiang/L2G at 0ec2504, deeplab-pytorch/libs/models/), written anew and independent of
l2g_core: a file "as deeplab-pytorch writes it" is the `state_dict()` of these modules, so its
keys, shapes and order come from deeplab-pytorch's module tree, never from our name map.

- resnet.py lines 26-46 `_ConvBnReLU`: Conv2d (no bias) `conv`, BatchNorm `bn` (eps 1e-5,
  momentum 1 - 0.999), ReLU `relu` (no parameters).
- resnet.py lines 49-71 `_Bottleneck`: `reduce` (1x1, the block's stride), `conv3x3` (dilated),
  `increase` (1x1, no ReLU), `shortcut` (1x1 with the stride) in the first block only.
- resnet.py lines 74-98 `_ResLayer`: `block1` ... `blockN`, every block at the layer's dilation.
- resnet.py lines 101-110 `_Stem`: `conv1` (7x7, stride 2) and `pool` (3x3 max, stride 2, ceil).
- resnet.py lines 113-124 `ResNet` (the ImageNet classifier): layer1..layer5, `fc` Linear.
- deeplabv1.py lines 17-31 `DeepLabV1`: layer1..layer5 (layer4/5 at stride 1, dilation 2/4),
  `fc` a 1x1 Conv2d: the COCO init `deeplabv1_resnet101-coco.pth` that convert.py writes
  (convert.py lines 176-183: 91 classes, no prefix).
- deeplabv2.py lines 17-52 `_ASPP` (c0..c3, dilated 3x3 with bias, normal std 0.01, bias 0,
  summed) and `DeepLabV2`.
- msc.py lines 13-47 `MSC`: `base`, the input also at 0.5x and 0.75x, pixel-wise max.
- main.py lines 158-163: the init file is loaded into `model.base` with strict=False.
"""

import torch
import torch.nn.functional as F
from torch import nn

RESNET101_BLOCKS = (3, 4, 23, 3)  # libs/models/__init__.py lines 29-50


class ConvBnReLU(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=1e-5, momentum=1 - 0.999))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    def __init__(self, in_ch, out_ch, stride, dilation, downsample):
        super().__init__()
        mid = out_ch // 4
        self.reduce = ConvBnReLU(in_ch, mid, 1, stride, 0, 1)
        self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBnReLU(mid, out_ch, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x):
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class ResLayer(nn.Sequential):
    def __init__(self, blocks, in_ch, out_ch, stride, dilation):
        super().__init__()
        for i in range(blocks):
            self.add_module(f"block{i + 1}", Bottleneck(in_ch if i == 0 else out_ch, out_ch,
                                                        stride if i == 0 else 1, dilation, downsample=i == 0))


class Stem(nn.Sequential):
    def __init__(self, out_ch):
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


def add_layers(net, dilated):
    """layer1..layer5 of a ResNet-101; `dilated`: layer4/5 at stride 1 and dilation 2/4 (DeepLab)."""
    ch = [64 * 2 ** p for p in range(6)]
    net.add_module("layer1", Stem(ch[0]))
    net.add_module("layer2", ResLayer(RESNET101_BLOCKS[0], ch[0], ch[2], 1, 1))
    net.add_module("layer3", ResLayer(RESNET101_BLOCKS[1], ch[2], ch[3], 2, 1))
    net.add_module("layer4", ResLayer(RESNET101_BLOCKS[2], ch[3], ch[4], *((1, 2) if dilated else (2, 1))))
    net.add_module("layer5", ResLayer(RESNET101_BLOCKS[3], ch[4], ch[5], *((1, 4) if dilated else (2, 1))))


class ResNet(nn.Sequential):
    def __init__(self, n_classes=1000):
        super().__init__()
        add_layers(self, dilated=False)
        self.add_module("pool5", nn.AdaptiveAvgPool2d(1))
        self.add_module("flatten", nn.Flatten())
        self.add_module("fc", nn.Linear(2048, n_classes))


class DeepLabV1(nn.Sequential):
    def __init__(self, n_classes=91):
        super().__init__()
        add_layers(self, dilated=True)
        self.add_module("fc", nn.Conv2d(2048, n_classes, 1))


class ASPP(nn.Module):
    def __init__(self, in_ch, out_ch, rates):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, 1, padding=rate, dilation=rate, bias=True))
        for conv in self.children():
            nn.init.normal_(conv.weight, mean=0, std=0.01)
            nn.init.constant_(conv.bias, 0)

    def forward(self, x):
        return sum(stage(x) for stage in self.children())


class DeepLabV2(nn.Sequential):
    def __init__(self, n_classes=21, rates=(6, 12, 18, 24)):
        super().__init__()
        add_layers(self, dilated=True)
        self.add_module("aspp", ASPP(2048, n_classes, rates))


class MSC(nn.Module):
    def __init__(self, base, scales=(0.5, 0.75)):
        super().__init__()
        self.base = base
        self.scales = scales

    def forward(self, x):
        logits = self.base(x)
        size = logits.shape[-2:]
        scaled = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)) for s in self.scales]
        every = [logits] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in scaled]
        fused = torch.max(torch.stack(every), dim=0)[0]
        return [logits, *scaled, fused] if self.training else fused


def deeplabv2_resnet101_msc(n_classes=21):
    """DeepLabV2_ResNet101_MSC of libs/models/__init__.py lines 44-50."""
    return MSC(DeepLabV2(n_classes))


def with_statistics(module, seed=0):
    """`module` with BatchNorm statistics and affine parameters that are not the identity, as a
    trained file has (drawn from `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 0.2 - 0.1)
    return module


def load_init(model, state):
    """main.py lines 158-163: the init file into the MSC's base, strict=False (the ASPP or the fc
    the file lacks or has in excess is skipped; returns torch's missing/unexpected lists)."""
    return model.base.load_state_dict(state, strict=False)
