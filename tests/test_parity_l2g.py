"""Parity with the official L2G code (PengtaoJiang/L2G at 0ec2504): the ResNet-38 classifier, the
frozen set, the L2G targets and loss (VOC and COCO), the crop boxes, the VOC input pipeline, and
the parameter groups and learning rates of both training schedules.

Every `official_*` function below re-creates one piece of the official computation from the
official file named in its docstring (file and lines), written anew; each test runs it and our
code on the same tiny weights and inputs. The settings come from config/config.yaml, so these
tests also prove that the shipped `voc` and `coco` sections are the official recipes.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageEnhance
from torchvision import ops

from l2g_core.config import resolve_recipes
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


# --------------------------------------------------------------------------- the VOC input pipeline


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


def test_voc_loader_is_the_official_one(tmp_path):
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
    sample = dataset[1]
    # the draws our loader made for this sample, in its order: the crop box, then the jitter
    rng = np.random.default_rng([5, 0, 1])
    left, top, _, _ = crop_box((768, 512), 448, rng, "official")
    ops_ = draw_jitter(section["jitter"], rng)
    assert top > 64 or left <= 64  # official axes: the top edge ranges over the width (0..320)
    image, saliency = official_voc_sample(rgb, sal, left, top, ops_, IMAGE_STATS["imagenet"])
    torch.testing.assert_close(sample["image"], image, rtol=0, atol=1e-5)
    torch.testing.assert_close(sample["saliency"], saliency, rtol=0, atol=1e-6)


def test_coco_loader_is_the_official_one(tmp_path):
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
    sample = dataset[1]
    ops_ = draw_jitter(section["jitter"], np.random.default_rng([5, 0, 1]))  # our draws for this sample
    image, saliency = official_coco_sample(rgb, sal, ops_)
    torch.testing.assert_close(sample["image"], image, rtol=0, atol=1e-5)
    torch.testing.assert_close(sample["saliency"], saliency, rtol=0, atol=1e-6)
