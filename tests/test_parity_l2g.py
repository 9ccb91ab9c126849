"""Parity with the official L2G code (PengtaoJiang/L2G at 0ec2504): the ResNet-38 classifier, the
frozen set, the L2G targets and loss (VOC and COCO), the crop boxes, the VOC input pipeline, and
the parameter groups and learning rates of both training schedules.

Every `official_*` function below re-creates one piece of the official computation from the
official file named in its docstring (file and lines), written anew; each test runs it and our
code on the same tiny weights and inputs. The settings come from config/config.yaml, so these
tests also prove that the shipped `voc` and `coco` sections are the official recipes.
"""

import collections
import dataclasses
import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageEnhance
from scipy import stats
from torchvision import ops

from l2g_core.config import resolve_recipes
from l2g_core.data import torch_data
from l2g_core.data.augment import crop_box, draw_jitter
from l2g_core.data.torch_data import ImageOptions, LabelledImages
from l2g_core.l2g import sample_boxes
from l2g_core.model_io import load_classifier, save_classifier
from l2g_core.models import build_classifier
from l2g_core.stages.train_l2g import l2g_losses
from l2g_core.training import build_optimizer, lr_factor

from conftest import REPO, prepare_tiny_dataset, stage_args, stage_settings

CONFIG = resolve_recipes(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))  # coco: recipe voc + its own
NEW_LAYERS = ("fc8", "f8_3", "f8_4", "f9")  # models/resnet38.py line 24: from_scratch_layers


@pytest.fixture(scope="module")
def resnet38_file(tmp_path_factory):
    """A classifier built on a (random) ImageNet-style init file, as train-cls writes it."""
    root = tmp_path_factory.mktemp("r38")
    torch.manual_seed(0)
    init = root / "resnet38_init.pt"
    backbone = build_classifier("resnet38", 20, pcm=True).state_dict()
    torch.save({k: v for k, v in backbone.items() if not k.startswith(NEW_LAYERS)}, init)
    model = build_classifier("resnet38", 20, pcm=True, init=str(init))
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    path = root / "cls.pt"
    save_classifier(path, model, stage="cls", class_names=[f"c{i}" for i in range(20)], settings={})
    return path, model


# --------------------------------------------------------------------------- the network


def official_block(w, name, x, *, stride=1, dilation=1, first_dilation=None, bottleneck=False):
    """ResBlock.forward / ResBlock_bot.forward (models/resnet38_base.py lines 28-50, 75-100) on
    the weights `w` under the official names; returns (output, activated input)."""
    def bn(key, t):
        return F.batch_norm(t, w[f"{key}.running_mean"], w[f"{key}.running_var"], w[f"{key}.weight"],
                            w[f"{key}.bias"], training=False, eps=1e-5)

    act = F.relu(bn(f"{name}.bn_branch2a", x))
    if bottleneck:  # 1x1 -> 3x3 (dilation) -> 1x1, the shortcut always projected
        shortcut = F.conv2d(act, w[f"{name}.conv_branch1.weight"], stride=stride)
        y = F.conv2d(act, w[f"{name}.conv_branch2a.weight"], stride=stride)
        y = F.conv2d(F.relu(bn(f"{name}.bn_branch2b1", y)), w[f"{name}.conv_branch2b1.weight"],
                     padding=dilation, dilation=dilation)
        y = F.conv2d(F.relu(bn(f"{name}.bn_branch2b2", y)), w[f"{name}.conv_branch2b2.weight"])
        return shortcut + y, act
    first = dilation if first_dilation is None else first_dilation
    projected = f"{name}.conv_branch1.weight" in w
    shortcut = F.conv2d(act, w[f"{name}.conv_branch1.weight"], stride=stride) if projected else x
    y = F.conv2d(act, w[f"{name}.conv_branch2a.weight"], stride=stride, padding=first, dilation=first)
    y = F.conv2d(F.relu(bn(f"{name}.bn_branch2b1", y)), w[f"{name}.conv_branch2b1.weight"],
                 padding=dilation, dilation=dilation)
    return shortcut + y, act


def official_resnet38_cam(w, image):
    """Net.forward_as_dict (resnet38_base.py lines 146-174) and the L2G Net.forward and PCM
    (models/resnet38.py lines 26-59), which propagates the 4096-channel features, then fc8.
    Returns (featmap, pred) as the official forward does."""
    x = F.conv2d(image, w["conv1a.weight"], padding=1)
    for name, stride in (("b2", 2), ("b2_1", 1), ("b2_2", 1), ("b3", 2), ("b3_1", 1), ("b3_2", 1), ("b4", 2),
                         ("b4_1", 1), ("b4_2", 1), ("b4_3", 1), ("b4_4", 1), ("b4_5", 1)):
        x, _ = official_block(w, name, x, stride=stride)
    x, conv4 = official_block(w, "b5", x, dilation=2, first_dilation=1)
    x, _ = official_block(w, "b5_1", x, dilation=2)
    x, _ = official_block(w, "b5_2", x, dilation=2)
    x, conv5 = official_block(w, "b6", x, dilation=4, bottleneck=True)
    x, _ = official_block(w, "b7", x, dilation=4, bottleneck=True)
    conv6 = F.relu(F.batch_norm(x, w["bn7.running_mean"], w["bn7.running_var"], w["bn7.weight"], w["bn7.bias"],
                                training=False, eps=1e-5))
    cam = F.conv2d(conv6, w["fc8.weight"])
    n, _, h, width = conv6.shape
    f = torch.cat([F.interpolate(image, (h, width), mode="bilinear", align_corners=True),
                   F.conv2d(conv4, w["f8_3.weight"]), F.conv2d(conv5, w["f8_4.weight"])], dim=1)
    f = F.conv2d(f, w["f9.weight"]).view(n, -1, h * width)
    f = f / (torch.norm(f, dim=1, keepdim=True) + 1e-5)
    aff = F.relu(torch.matmul(f.transpose(1, 2), f))
    aff = aff / (torch.sum(aff, dim=1, keepdim=True) + 1e-5)
    x_att = torch.matmul(conv6.view(n, -1, h * width), aff).view(n, -1, h, width)
    featmap = cam + F.conv2d(x_att, w["fc8.weight"])
    pred = F.avg_pool2d(featmap[:, :-1], kernel_size=(h, width)).view(n, -1)
    return featmap, pred


def test_resnet38_cam_classifier_computes_the_official_forward(resnet38_file):
    _, model = resnet38_file
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    weights = model.state_dict()
    with torch.no_grad():
        ours = model.eval()(x)
        featmap, pred = official_resnet38_cam(weights, x)
    torch.testing.assert_close(ours["cams"], featmap, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["logits"], pred, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- frozen set


def official_frozen(model):
    """Net.train() of resnet38_base.py lines 177-199 with resnet38.py line 23's not_training
    [conv1a, b2, b2_1, b2_2]: the names it sets requires_grad=False, and that every BatchNorm is
    in eval mode after train()."""
    frozen = {f"{name}.weight" for name in ("conv1a",)}
    for block in ("b2", "b2_1", "b2_2"):
        for child, module in getattr(model, block).named_children():
            frozen |= {f"{block}.{child}.{p}" for p, _ in module.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            frozen |= {f"{name}.weight", f"{name}.bias"}
    return frozen


def test_a_reloaded_classifier_is_frozen_as_the_official_one(resnet38_file):
    path, model = resnet38_file
    reloaded, _ = load_classifier(path)
    for net in (model, reloaded):
        net.train()
        assert {n for n, p in net.named_parameters() if not p.requires_grad} == official_frozen(net)
        assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert net.b6.dropout_2b1.training  # dropout still trains


# --------------------------------------------------------------------------- parameter groups, learning rates


def official_l2g_lrs(net_g, net_l, lr):
    """get_parameter_groups (models/resnet38.py lines 67-87) of both networks and the eight SGD
    groups of train_l2g_sal_voc.py lines 115-124 / train_l2g_sal_coco.py lines 112-135:
    {id(parameter): base lr} of the parameters the optimizer can change. The groups are taken
    before train() freezes anything, so frozen weights sit in group 0 but never get a gradient."""
    lrs = {}
    for net in (net_g, net_l):
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                new = name.split(".")[0] in NEW_LAYERS
                lrs[id(module.weight)] = lr * (10 if new else 1)
                if module.bias is not None:
                    lrs[id(module.bias)] = lr * (20 if new else 2)
    trainable = {id(p) for net in (net_g, net_l) for p in net.parameters() if p.requires_grad}
    return {key: value for key, value in lrs.items() if key in trainable}


def official_voc_lr_factors(epochs, decay_points="5"):
    """my_optim.reduce_lr (scripts/my_optim.py lines 50-62), called at the start of every epoch
    (train_l2g_sal_voc.py line 156): x0.1 when the epoch is a decay point."""
    factor, factors = 1.0, []
    for epoch in range(epochs):
        if epoch in [int(v) for v in decay_points.split(",")]:
            factor *= 0.1
        factors.append(factor)
    return factors


def _our_groups(net_g, net_l, settings):
    optimizer = build_optimizer([net_g, net_l], settings)
    return optimizer, {id(p): g for g in optimizer.param_groups for p in g["params"]}


def groups_of_both(resnet38_file, dataset, official_lr):
    """The global and local networks from the ImageNet file, our optimizer over them with the
    dataset's train_l2g settings, our groups by parameter, the official lr of every parameter."""
    path, _ = resnet38_file
    section = CONFIG[dataset]["train_l2g"]
    settings = stage_settings("train-l2g", section)
    net_g, net_l = load_classifier(path)[0].train(), load_classifier(path)[0].train()
    optimizer, ours = _our_groups(net_g, net_l, settings)
    official = official_l2g_lrs(net_g, net_l, official_lr)
    assert set(ours) == set(official)
    return section, settings, optimizer, ours, official


def test_voc_l2g_groups_and_step_schedule_are_official(resnet38_file):
    # train_l2g_sal_voc.sh: --lr=0.001
    section, settings, optimizer, ours, official = groups_of_both(resnet38_file, "voc", 0.001)
    for group in optimizer.param_groups:  # SGD(momentum=0.9, weight_decay=5e-4, nesterov=True)
        assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 0.0005, True)
    updates_per_epoch = 7
    total = updates_per_epoch * section["epochs"]  # --epoch=10
    for epoch, factor in enumerate(official_voc_lr_factors(10, "5")):  # --decay_points='5'
        for update in range(epoch * updates_per_epoch, (epoch + 1) * updates_per_epoch):
            ours_factor = lr_factor(settings, epoch, update, total)
            assert ours_factor == pytest.approx(factor, rel=1e-12)
    assert all(ours[k]["base_lr"] == pytest.approx(v, rel=1e-12) for k, v in official.items())


class OfficialPolyOptimizer(torch.optim.SGD):
    """utils/torchutils.py lines 10-31: SGD built as super().__init__(params, lr, weight_decay),
    so the weight decay lands in SGD's third positional parameter, momentum; its own `momentum`
    (0.7) is the poly power; the factor is set before each step from the initial lrs."""

    def __init__(self, params, lr, weight_decay, max_step, momentum=0.7):
        super().__init__(params, lr, weight_decay)
        self.global_step, self.max_step, self.power = 0, max_step, momentum
        self.initial = [group["lr"] for group in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            factor = (1 - self.global_step / self.max_step) ** self.power
            for group, initial in zip(self.param_groups, self.initial):
                group["lr"] = initial * factor
        super().step(closure)
        self.global_step += 1


def test_coco_l2g_poly_optimizer_is_official_momentum_bug_included(resnet38_file):
    # train_l2g_sal_coco.sh: LR=0.1, --poly_optimizer
    _, settings, optimizer, ours, lrs = groups_of_both(resnet38_file, "coco", 0.1)
    total = 5
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(8)]
    base = [0.1, 0.1, 0.2, 0.2, 1.0, 1.0, 2.0, 2.0]  # the 1x/2x/10x/20x groups of both networks
    official = OfficialPolyOptimizer([{"params": [p], "lr": lr} for p, lr in zip(params, base)], lr=0.1,
                                     weight_decay=0.0005, max_step=total)
    for group in official.param_groups:  # what ran: momentum 5e-4, no weight decay, no Nesterov
        assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.0005, 0, False)
    for group in optimizer.param_groups:
        assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.0005, 0, False)
    for update in range(total):
        for p in params:
            p.grad = torch.zeros(1)
        official.step()  # sets this step's lr, then steps
        assert official.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(settings, 0, update, total), rel=1e-12)
    # `recipe: voc` leaves VOC's step_epochs [5] and gamma 0.1 in the coco section (passed as
    # --step-epochs 5 --gamma 0.1): under poly, step settings change nothing in any epoch, as the
    # official DECAY_POINTS='5,10', which train_l2g_sal_coco.sh sets but does not pass
    stepped = dataclasses.replace(settings, step_epochs=[5, 10], gamma=0.1)
    poly = lr_factor(settings, 0, 3, total)
    for epoch in range(CONFIG["coco"]["train_l2g"]["epochs"]):
        assert lr_factor(stepped, epoch, 3, total) == lr_factor(settings, epoch, 3, total) == poly
    # the warm-up of train_l2g_sal_coco.py lines 182-198 divides the lrs by 100 and restores them,
    # but PolyOptimizer.step overwrites them from its initial lrs first: it changes nothing
    assert all(ours[k]["base_lr"] == pytest.approx(v, rel=1e-12) for k, v in lrs.items())


# --------------------------------------------------------------------------- targets and loss


def official_boxes(input_size, crop_size, patch_size, rng):
    """VOCDataset_l2g_sal_crop.box_generation (utils/LoadData.py lines 382-396): the four corners,
    then random ones with np.random.randint(0, max_range) (max_range excluded)."""
    far = input_size - crop_size
    boxes = [[0, 0, 0, crop_size, crop_size], [0, 0, far, crop_size, far + crop_size],
             [0, far, 0, far + crop_size, crop_size], [0, far, far, far + crop_size, far + crop_size]]
    for _ in range(patch_size - 4):
        ind_h, ind_w = rng.integers(0, far, size=2)
        boxes.append([0, int(ind_w), int(ind_h), int(ind_w) + crop_size, int(ind_h) + crop_size])
    return torch.tensor(boxes)


def test_corner_boxes_are_the_official_ones():
    ours = sample_boxes(2, 6, 320, 448, torch.Generator().manual_seed(0), corners=True)
    official = official_boxes(448, 320, 6, np.random.default_rng(0))
    assert torch.equal(ours[0, :4], official[:4, 1:]) and torch.equal(ours[1, :4], official[:4, 1:])
    many = sample_boxes(500, 6, 320, 448, torch.Generator().manual_seed(1), corners=True)[:, 4:, :2]
    assert many.min() == 0 and many.max() == 127  # randint(0, 128): 128 is never drawn


def official_l2g_loss(feat, logits_local, feat_local, label, local_label, crop_sals, boxes, *, kd_weights,
                      bg_thr, coco):
    """The loss of one step, train_l2g_sal_voc.py lines 166-218 (coco=False) or
    train_l2g_sal_coco.py lines 205-257 (coco=True: the background target is the background
    score times 1 - saliency, line 243). boxes: (bs * bxs, 5) [index, x1, y1, x2, y2]."""
    bs, bxs = label.shape[0], crop_sals.shape[1]
    crop_sals = crop_sals.reshape(bs * bxs, *crop_sals.shape[2:])
    target = feat_local.clone().detach()
    target[target < 0] = 0
    peak = torch.max(torch.max(target, dim=3)[0], dim=2)[0]
    target = target / (peak.unsqueeze(2).unsqueeze(3) + 1e-8)
    for i in range(bs):
        absent = torch.nonzero(label[i] == 0)
        target[i * bxs:(i + 1) * bxs, absent] = 0
    n, c, h, w = target.shape
    flat = target.permute(1, 0, 2, 3).reshape(c, -1)
    winner = torch.argsort(-flat, axis=0)
    flat = torch.eye(c)[winner[0]].transpose(0, 1).type_as(flat) * flat
    target = flat.reshape(c, n, h, w).permute(1, 0, 2, 3)
    active = (target > bg_thr).type_as(target)
    crop_sals = F.interpolate(crop_sals, (h, w)).type_as(target)
    target[:, :-1] = active[:, :-1] * crop_sals.repeat(1, c - 1, 1, 1)
    if coco:
        target[:, -1] = target[:, -1] * (1 - crop_sals).squeeze(1)
    else:
        target[:, -1] = active[:, -1] * (1 - crop_sals).squeeze(1)
    aligned = F.softmax(ops.roi_align(feat, boxes.type_as(feat), (h, w), 1 / 8.0), dim=1)
    loss_kd = torch.nn.MSELoss()(aligned, target) * kd_weights
    return loss_kd + F.multilabel_soft_margin_loss(logits_local, local_label), loss_kd


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_l2g_targets_and_loss_are_the_official_ones(dataset):
    section = dict(CONFIG[dataset]["train_l2g"])
    torch.manual_seed(0)
    num_classes, batch, size, crop, crops = 6, 2, 64, 40, section["num_crops"]
    net_g = build_classifier("small", num_classes, pcm=True).eval()
    net_l = build_classifier("small", num_classes, pcm=True).eval()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = (torch.rand(batch, num_classes, generator=generator) > 0.5).float()
    labels[:, 0] = 1
    saliency = torch.rand(batch, 1, size, size, generator=generator)
    saliency = saliency / saliency.amax(dim=(2, 3), keepdim=True)
    boxes = sample_boxes(batch, crops, crop, size, generator, corners=section["crop_layout"] == "corners")
    options = stage_args("train-l2g", section)
    options.crop_size = crop  # the recipe's options at this test's small size
    with torch.no_grad():
        ours = l2g_losses(net_g, net_l, {"image": images, "label": labels, "saliency": saliency}, boxes,
                          options, net_g.stride)
        # the official loader cuts the crops (LoadData.py lines 364-372) and numbers the boxes
        crop_imgs = torch.stack([images[b, :, y1:y2, x1:x2] for b in range(batch)
                                 for x1, y1, x2, y2 in boxes[b].tolist()])
        crop_sals = torch.stack([saliency[b, :, y1:y2, x1:x2] for b in range(batch)
                                 for x1, y1, x2, y2 in boxes[b].tolist()]).reshape(batch, crops, 1, crop, crop)
        index = torch.arange(batch).repeat_interleave(crops)[:, None].float()
        official_boxes_ = torch.cat([index, boxes.reshape(-1, 4).float()], dim=1)
        out_l = net_l(crop_imgs)
        loss, kd = official_l2g_loss(net_g(images)["cams"], out_l["logits"], out_l["cams"], labels,
                                     labels.repeat_interleave(crops, dim=0), crop_sals, official_boxes_,
                                     kd_weights=section["kd_weight"], bg_thr=section["bg_thr"],
                                     coco=dataset == "coco")
    assert kd > 0
    torch.testing.assert_close(ours["kd"], kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss"], loss, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the random draws of the loaders
#
# The official loaders draw with numpy's legacy global generator (the colour jitter, the local
# boxes) and with python's `random` (VOC's input crop); ours with numpy / torch Generators seeded
# per sample. The streams cannot match, so the draws are compared as distributions: the recreated
# official draw functions below (written from the official source, each seeded here) and ours,
# N_DRAWS samples each, with fixed seeds (deterministic: no flaky outcome). A halved range, a
# one-sided hue or a crop drawn over the wrong axis fails the support checks and the KS tests.

N_DRAWS = 20000
KS_P = 1e-3  # two-sample Kolmogorov-Smirnov: ours and the official draws from one distribution
OFFICIAL_JITTER = (0.3, 0.3, 0.3, 0.1)  # ColorJitter(...) of utils/LoadData.py lines 221 (COCO) and 428 (VOC)


def official_jitter_draws(strengths, legacy):
    """The draws of ColorJitter.get_params (utils/transforms/transforms.py lines 537-567) as
    [(name, factor), ...] in the order the Compose applies them. Lines 548-562: one
    np.random.uniform per strength > 0, brightness, contrast, saturation, then hue; a factor from
    [max(0, 1 - s), 1 + s], the hue shift from [-h, h]; line 564: np.random.shuffle of the list.
    `legacy`: a np.random.RandomState, the class of numpy's legacy global generator that those
    module-level calls use."""
    drawn = []
    for name, strength in zip(("brightness", "contrast", "saturation", "hue"), strengths):
        if strength <= 0:
            continue
        bounds = (-strength, strength) if name == "hue" else (max(0, 1 - strength), 1 + strength)
        drawn.append((name, float(legacy.uniform(*bounds))))
    legacy.shuffle(drawn)
    return drawn


def official_input_crop(image_size, crop, rand):
    """imutils.get_random_crop_box (utils/imutils.py lines 78-101) as VOCDataset_l2g_sal_crop calls
    and uses it (utils/LoadData.py lines 354-356): called with PIL's (width, height), which line 79
    unpacks as (h, w), so `img_left` is drawn over the height and `img_top` over the width
    (lines 84-99, python's random.randrange); the image is cropped with (box[6], box[4], box[7],
    box[5]). Returns that (left, top, right, bottom). `rand`: a random.Random."""
    first, second = image_size  # the function's "h" and "w"
    rows, cols = min(crop, first), min(crop, second)  # its ch, cw
    if second - crop > 0:  # its w_space
        left = rand.randrange(second - crop + 1)
    else:  # the draw goes to cont_left, which the crop does not use
        rand.randrange(crop - second + 1)
        left = 0
    if first - crop > 0:  # its h_space
        top = rand.randrange(first - crop + 1)
    else:
        rand.randrange(crop - first + 1)
        top = 0
    return left, top, left + cols, top + rows


def official_random_boxes(input_size, crop_size, patch_num, legacy):
    """box_generation of VOCDataset_l2g_sal, COCO's loader (utils/LoadData.py lines 292-300):
    patch_num boxes, each from ind_h, ind_w = np.random.randint(0, input_size - crop_size, size=2)
    as [0, ind_w, ind_h, ind_w + crop, ind_h + crop]. Returns (patch_num, 4) [x1, y1, x2, y2]."""
    far = input_size - crop_size
    boxes = []
    for _ in range(patch_num):
        y, x = legacy.randint(0, far, size=2)
        boxes.append([x, y, x + crop_size, y + crop_size])
    return np.array(boxes)


def our_sample_draws(dataset, count, image_size=None, seed=5):
    """The draws LabelledImages.__getitem__ makes for samples 0..count-1 of epoch 0 (one
    np.random.default_rng([seed, epoch, index]) per sample: the input crop box where the section
    crops, then the jitter). Returns (crop boxes or None, jitter draws)."""
    section = CONFIG[dataset]["train_l2g"]
    boxes, jitters = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, 0, index])
        if section["resize"] == "short_crop":
            boxes.append(crop_box(image_size, section["input_size"], rng, section["crop_axes"]))
        jitters.append(draw_jitter(section["jitter"], rng))
    return (np.array(boxes) if boxes else None), jitters


def assert_same_distribution(ours, official, what):
    ours, official = np.asarray(ours, dtype=np.float64), np.asarray(official, dtype=np.float64)
    result = stats.ks_2samp(ours, official)
    assert result.pvalue > KS_P, f"{what}: KS p = {result.pvalue:.2e} (statistic {result.statistic:.4f})"


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_jitter_draws_are_distributed_as_the_official_ones(dataset):
    _, ours = our_sample_draws(dataset, N_DRAWS, image_size=(768, 512))
    legacy = np.random.RandomState(0)
    official = [official_jitter_draws(OFFICIAL_JITTER, legacy) for _ in range(N_DRAWS)]
    names = ("brightness", "contrast", "saturation", "hue")
    assert all(sorted(n for n, _ in draw) == sorted(names) for draw in ours)
    for name, strength in zip(names, OFFICIAL_JITTER):
        mine = np.array([dict(draw)[name] for draw in ours])
        theirs = np.array([dict(draw)[name] for draw in official])
        low, high = (-strength, strength) if name == "hue" else (1 - strength, 1 + strength)
        # the recreation draws over the official bounds, and ours over the same, on both sides
        assert abs(theirs.min() - low) < 0.02 and abs(theirs.max() - high) < 0.02, name
        assert abs(mine.min() - theirs.min()) < 0.02, (name, mine.min(), theirs.min())
        assert abs(mine.max() - theirs.max()) < 0.02, (name, mine.max(), theirs.max())
        assert abs(mine.mean() - theirs.mean()) < 0.01, (name, mine.mean(), theirs.mean())
        assert_same_distribution(mine, theirs, name)
    hue = np.array([dict(draw)["hue"] for draw in ours])
    assert abs(hue.min() + hue.max()) < 0.02 and 0.47 < (hue < 0).mean() < 0.53  # symmetric around 0
    # the order: every one of the 24 permutations, as often as the official shuffle gives each
    mine = collections.Counter(tuple(n for n, _ in draw) for draw in ours)
    theirs = collections.Counter(tuple(n for n, _ in draw) for draw in official)
    orders = sorted(itertools.permutations(names))
    assert set(mine) == set(theirs) == set(orders)
    assert all(0.8 < mine[o] / (N_DRAWS / 24) < 1.2 for o in orders), mine
    table = np.array([[mine[o] for o in orders], [theirs[o] for o in orders]])
    assert stats.chi2_contingency(table).pvalue > KS_P
    # and the position of each operation is independent of its factor (one shuffle of fixed draws)
    first = np.array([draw[0][0] == "brightness" for draw in ours])
    brightness = np.array([dict(draw)["brightness"] for draw in ours])
    assert_same_distribution(brightness[first], brightness[~first], "brightness first or not")


@pytest.mark.parametrize("size", [(768, 512), (512, 683), (700, 700)])
def test_input_crop_boxes_are_distributed_as_the_official_ones(size):
    """VOC's 448 crop of the image at short side 512: the left edge over 0..height - 448 and the
    top edge over 0..width - 448 (the official quirk), uniform, as get_random_crop_box draws them."""
    ours, _ = our_sample_draws("voc", N_DRAWS, image_size=size)
    rand = random.Random(0)
    official = np.array([official_input_crop(size, 448, rand) for _ in range(N_DRAWS)])
    width, height = size
    assert (official[:, 0].max(), official[:, 1].max()) == (height - 448, width - 448)  # the recreation
    assert np.all(ours[:, 2:] - ours[:, :2] == 448) and np.all(official[:, 2:] - official[:, :2] == 448)
    for axis, name in enumerate(("left", "top")):
        mine, theirs = ours[:, axis], official[:, axis]
        assert (mine.min(), mine.max()) == (theirs.min(), theirs.max()), name
        assert len(np.unique(mine)) == len(np.unique(theirs)), name  # every position of the range
        assert_same_distribution(mine, theirs, f"{name} of {size}")


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_random_local_boxes_are_distributed_as_the_official_ones(dataset):
    """The random local boxes: COCO's four (VOCDataset_l2g_sal.box_generation), VOC's two after
    the corners (VOCDataset_l2g_sal_crop.box_generation, lines 391-393, the same draw)."""
    section = CONFIG[dataset]["train_l2g"]
    size, crop, crops = section["input_size"], section["crop_size"], section["num_crops"]
    corners = section["crop_layout"] == "corners"
    count = N_DRAWS // crops
    ours = sample_boxes(count, crops, crop, size, torch.Generator().manual_seed(0), corners=corners)
    ours = (ours[:, 4:] if corners else ours).reshape(-1, 4).numpy()
    legacy = np.random.RandomState(0)
    official = np.concatenate([official_random_boxes(size, crop, crops - 4 if corners else crops, legacy)
                               for _ in range(count)])
    assert np.all(ours[:, 2:] - ours[:, :2] == crop)
    for axis, name in enumerate(("x", "y")):
        mine, theirs = ours[:, axis], official[:, axis]
        assert (mine.min(), mine.max()) == (theirs.min(), theirs.max()) == (0, size - crop - 1), name
        assert_same_distribution(mine, theirs, name)


# --------------------------------------------------------------------------- the input pipelines, for given draws


def record_draws(monkeypatch, box, jitter_ops):
    """Make our loader (l2g_core.data.torch_data) take the given draws instead of its own: its
    crop_box returns `box` and its draw_jitter `jitter_ops`. Returns the list of their calls."""
    calls = []

    def fake_crop_box(image_size, crop, rng, axes):
        calls.append(("crop_box", tuple(image_size), crop, axes))
        return box

    def fake_draw_jitter(strengths, rng):
        calls.append(("draw_jitter", tuple(strengths)))
        return jitter_ops

    monkeypatch.setattr(torch_data, "crop_box", fake_crop_box)
    monkeypatch.setattr(torch_data, "draw_jitter", fake_draw_jitter)
    return calls


def official_voc_sample(rgb, sal, left, top, jitter_ops, stats):
    """VOCDataset_l2g_sal_crop.__getitem__ (utils/LoadData.py lines 341-359) for given draws: short
    side 512 (imutils.ResizeShort lines 24-41: image bicubic, saliency nearest), the crop box of
    imutils.get_random_crop_box (lines 78-101) as (img_left, img_top) given, PIL crop, then
    official_jitter_and_tensors."""
    def short_512(image, resample):
        w, h = image.size
        size = (512, int(round(h * 512 / w))) if w < h else (int(round(w * 512 / h)), 512)
        return image.resize(size, resample=resample)

    image = short_512(Image.fromarray(rgb), Image.BICUBIC).crop((left, top, left + 448, top + 448))
    sal = short_512(Image.fromarray(sal), Image.NEAREST).crop((left, top, left + 448, top + 448))
    return official_jitter_and_tensors(image, sal, jitter_ops, stats)


def official_jitter_and_tensors(image, sal, jitter_ops, stats):
    """ColorJitter (utils/transforms/transforms.py lines 537-579: the drawn operations in their
    shuffled order, functional.py lines 392-494), ToTensor, Normalize; the saliency to_tensor and
    over its maximum (LoadData.py lines 358-359, 268-269)."""
    for name, factor in jitter_ops:
        if name == "hue":
            h, s, v = image.convert("HSV").split()
            shifted = np.array(h, dtype=np.uint8)
            shifted += np.array(int(factor * 255)).astype(np.uint8)  # np.uint8(hue_factor * 255), wrapped
            image = Image.merge("HSV", (Image.fromarray(shifted, "L"), s, v)).convert("RGB")
        else:
            enhancer = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                        "saturation": ImageEnhance.Color}[name]
            image = enhancer(image).enhance(factor)
    mean, std = stats
    tensor = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
              - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    sal = torch.from_numpy(np.asarray(sal, dtype=np.float32) / 255)[None]
    return tensor, sal / (sal.max() + 1e-10)


def official_coco_sample(rgb, sal, jitter_ops):
    """VOCDataset_l2g_sal.__getitem__ with train_l2g_sal_data_loader's transforms for COCO
    (utils/LoadData.py lines 210-224, 259-269): Resize(448), which the vendored transforms turn
    into a 448 x 448 warp (utils/transforms/transforms.py line 147, PIL bilinear), the colour
    jitter, the COCO mean and std (lines 211-213); the saliency map resized to 448 x 448 (bilinear,
    functional.resize's default) and divided by its maximum."""
    image = Image.fromarray(rgb).resize((448, 448), Image.BILINEAR)
    sal = Image.fromarray(sal).resize((448, 448), Image.BILINEAR)
    return official_jitter_and_tensors(image, sal, jitter_ops, ((0.471, 0.448, 0.408), (0.234, 0.239, 0.242)))


def test_voc_loader_is_the_official_one(tmp_path, monkeypatch):
    """Our VOC loader, given the draws of the recreated official draw functions, makes the
    official sample; that its own draws are distributed as those: the tests above."""
    from l2g_core.data.augment import IMAGE_STATS

    manifest_path = prepare_tiny_dataset(tmp_path, train=3, size=64)
    manifest = yaml.safe_load(manifest_path.read_text())
    section = CONFIG["voc"]["train_l2g"]
    options = ImageOptions(resize=section["resize"], short_side=section["short_side"],
                           crop_axes=section["crop_axes"], flip=section["flip"], jitter=tuple(section["jitter"]),
                           saliency_norm=section["saliency_norm"], stats=section["image_stats"])
    dataset = LabelledImages(manifest, "train", 448, saliency=True, options=options, seed=5)
    rgb = np.asarray(Image.fromarray(dataset.layout.load_image(dataset.ids[1])).resize((96, 64)))
    sal = np.rint(dataset.layout.load_saliency(dataset.ids[1]) * 255).astype(np.uint8)
    sal = np.asarray(Image.fromarray(sal).resize((96, 64)))
    dataset.layout.load_image = lambda image_id: rgb  # a landscape image: 768 x 512 at short side 512
    dataset.layout.load_saliency = lambda image_id: sal.astype(np.float32) / 255
    # one sample's official draws: the crop box (python's random), then the jitter (numpy's)
    box = official_input_crop((768, 512), 448, random.Random(1))
    ops_ = official_jitter_draws(OFFICIAL_JITTER, np.random.RandomState(6))
    assert box[1] > 512 - 448  # the top edge drawn over the width: the box runs past the image (black)
    assert dict(ops_)["hue"] < 0 and ops_[0][0] == "hue"  # a negative shift (wraps in uint8), first
    calls = record_draws(monkeypatch, box, ops_)
    sample = dataset[1]
    assert calls == [("crop_box", (768, 512), 448, "official"), ("draw_jitter", OFFICIAL_JITTER)]
    image, saliency = official_voc_sample(rgb, sal, box[0], box[1], ops_, IMAGE_STATS["imagenet"])
    torch.testing.assert_close(sample["image"], image, rtol=0, atol=1e-5)
    torch.testing.assert_close(sample["saliency"], saliency, rtol=0, atol=1e-6)


def test_coco_loader_is_the_official_one(tmp_path, monkeypatch):
    """Our COCO loader (no crop: the image is warped), given the recreated official jitter draws,
    makes the official sample."""
    manifest_path = prepare_tiny_dataset(tmp_path, train=3, size=64)
    manifest = yaml.safe_load(manifest_path.read_text())
    section = CONFIG["coco"]["train_l2g"]
    options = ImageOptions(resize=section["resize"], flip=section["flip"], jitter=tuple(section["jitter"]),
                           saliency_norm=section["saliency_norm"], stats=section["image_stats"])
    dataset = LabelledImages(manifest, "train", section["input_size"], saliency=True, options=options, seed=5)
    rgb = np.asarray(Image.fromarray(dataset.layout.load_image(dataset.ids[1])).resize((96, 64)))
    sal = np.rint(dataset.layout.load_saliency(dataset.ids[1]) * 255).astype(np.uint8)
    sal = np.asarray(Image.fromarray(sal).resize((96, 64)))
    dataset.layout.load_image = lambda image_id: rgb  # a landscape image, warped to a square
    dataset.layout.load_saliency = lambda image_id: sal.astype(np.float32) / 255
    ops_ = official_jitter_draws(OFFICIAL_JITTER, np.random.RandomState(1))  # one sample's official draws
    assert dict(ops_)["hue"] < 0
    calls = record_draws(monkeypatch, None, ops_)
    sample = dataset[1]
    assert calls == [("draw_jitter", OFFICIAL_JITTER)]  # no crop drawn
    image, saliency = official_coco_sample(rgb, sal, ops_)
    torch.testing.assert_close(sample["image"], image, rtol=0, atol=1e-5)
    torch.testing.assert_close(sample["saliency"], saliency, rtol=0, atol=1e-6)
