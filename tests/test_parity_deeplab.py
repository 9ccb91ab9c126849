"""Parity with deeplab-pytorch as L2G vendors it (PengtaoJiang/L2G at 0ec2504, deeplab-pytorch/):
the DeepLab-v2 ResNet-101 MSC network on the converted Caffe weights, the MSC loss, the parameter
groups, frozen set and poly learning rate of main.py with configs/voc12_resnet_dplv2.yaml and
configs/coco_resnet_dplv2.yaml (as our `voc` and `coco` sections set them).

Each `official_*` function re-creates one piece of the official computation from the file and
lines its docstring names, written anew; the tests run it and ours on the same weights and inputs.
"""

import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from l2g_core.config import resolve_recipes
from l2g_core.data.augment import normalise
from l2g_core.errors import L2GError
from l2g_core.models.deeplab import build_deeplab, segmentation_loss
from l2g_core.training import build_optimizer, lr_factor

import official_deeplab
from conftest import REPO, stage_settings

CONFIG = resolve_recipes(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))  # coco: recipe voc + its own
MEAN_BGR = (104.008, 116.669, 122.675)  # voc12_resnet_dplv2.yaml lines 20-24, as main.py line 121 orders it


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """deeplab-pytorch's COCO init as its convert.py writes it (the state_dict() of DeepLabV1 with an
    fc of 91 classes, re-created in tests/official_deeplab.py; BatchNorm statistics that are not the
    identity) saved as deeplabv1_resnet101-coco.pth; our model built on it as the voc recipe builds
    it; deeplab-pytorch's DeepLabV2_ResNet101_MSC initialised from it as main.py lines 158-163 do,
    its fresh ASPP given our fresh ASPP's draw (the file has none)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dlp") / "deeplabv1_resnet101-coco.pth"
    torch.save(official_deeplab.with_statistics(official_deeplab.DeepLabV1(n_classes=91)).state_dict(), path)
    section = CONFIG["voc"]["train_seg"]
    model = build_deeplab("resnet101", 21, rates=section["aspp_rates"], msc_scales=section["msc_scales"],
                          init=str(path), freeze_bn=section["freeze_bn"])
    official = official_deeplab.deeplabv2_resnet101_msc(21)
    skipped = official_deeplab.load_init(official, torch.load(path))
    assert sorted(skipped.unexpected_keys) == ["fc.bias", "fc.weight"]
    assert sorted(skipped.missing_keys) == sorted(f"aspp.c{i}.{p}" for i in range(4) for p in ("bias", "weight"))
    official.base.aspp.load_state_dict({k.removeprefix("aspp."): v for k, v in model.base.aspp.state_dict().items()})
    return path, official, model


def test_deeplab_v2_msc_on_the_released_init_is_the_official_network(converted):
    _, official, model = converted
    rgb = np.random.default_rng(0).integers(0, 256, (2, 57, 65, 3), dtype=np.uint8)
    # deeplab-pytorch's input: BGR, minus the Caffe mean (libs/datasets/base.py lines 105-113)
    bgr = torch.from_numpy(rgb[..., ::-1].astype(np.float32) - np.array(MEAN_BGR, np.float32)).permute(0, 3, 1, 2)
    ours_input = torch.stack([torch.from_numpy(normalise(image)) for image in rgb])  # what our loaders feed
    with torch.no_grad():
        expected = official.eval()(bgr.contiguous())
        ours = model.eval()(ours_input)
    assert ours.shape == expected.shape == (2, 21, 8, 9)
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=2e-3)


def test_the_released_init_loads_its_backbone_drops_fc_and_starts_a_fresh_aspp(converted, capsys):
    path, _, model = converted
    released = torch.load(path)
    ours = dict(model.base.named_parameters()) | dict(model.base.named_buffers())
    matched = _official_names(model.base, released)
    backbone = {name for name in ours if name.startswith("backbone.") and not name.endswith("num_batches_tracked")}
    assert set(matched) == backbone  # every backbone tensor is one of the file's, equal to it
    assert set(matched.values()) == {k for k in released if not k.startswith("fc.") and "num_batches" not in k}
    # the fresh ASPP is drawn as deeplab-pytorch's _ASPP draws its own (deeplabv2.py lines 30-32)
    fresh = official_deeplab.ASPP(2048, 21, (6, 12, 18, 24))
    for i in range(4):
        ours_w, theirs_w = getattr(model.base.aspp, f"c{i}").weight, getattr(fresh, f"c{i}").weight
        assert abs(ours_w.std().item() - theirs_w.std().item()) < 2e-4 and abs(ours_w.mean().item()) < 2e-4
        assert not getattr(model.base.aspp, f"c{i}").bias.any()
    report = model.base.init_report
    assert report.dropped == ["fc.weight", "fc.bias"] and report.fresh == [
        f"aspp.c{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert "DeepLab-v1 ResNet-101 (fc of 91 classes, no ASPP)" in report.layout
    build_deeplab("resnet101", 21, init=str(path))
    said = capsys.readouterr().out
    assert "dropped fc.weight, fc.bias" in said and "fresh: aspp.c0.weight" in said


def _official_names(ours, official_state):
    """{our name: the official key holding an equal tensor} (the weights are random, so unique)."""
    by_shape = {}
    for key, value in official_state.items():
        by_shape.setdefault(tuple(value.shape), []).append((key, value))
    out = {}
    for name, value in (dict(ours.named_parameters()) | dict(ours.named_buffers())).items():
        keys = [key for key, other in by_shape.get(tuple(value.shape), []) if torch.equal(value, other)]
        if len(keys) > 1:  # equal tensors (a fresh ASPP's zero biases): the one of the same place
            keys = [key for key in keys if key.split(".")[-2:] == name.split(".")[-2:]]
        if len(keys) == 1 and not name.endswith("num_batches_tracked"):
            out[name] = keys[0]
    return out


def trained_msc_file(path, layout):
    """A DeepLabV2_ResNet101_MSC of deeplab-pytorch as its main.py saves it (lines 287-294,
    model.module.state_dict(): base. keys, aspp.cN), or under the names of its releases before 1.0 (MSC's
    `scale.`, the shortcut as `proj`, the ASPP as `aspp.stages.cN`)."""
    torch.manual_seed(1)
    state = official_deeplab.with_statistics(official_deeplab.deeplabv2_resnet101_msc(21), seed=1).state_dict()
    if layout == "pre-1.0":
        state = {key.replace("base.", "scale.", 1).replace(".shortcut.", ".proj.").replace("aspp.", "aspp.stages."): value
                 for key, value in state.items()}
    torch.save(state, path)
    return state


@pytest.mark.parametrize("layout", ["base", "pre-1.0"])
def test_a_trained_deeplab_pytorch_model_loads_whole(tmp_path, layout):
    path = tmp_path / "deeplabv2_resnet101_msc-trained.pth"
    state = trained_msc_file(path, layout)
    model = build_deeplab("resnet101", 21, init=str(path), quiet=True)
    matched = _official_names(model, state)
    assert len(matched) == len([k for k in state if "num_batches" not in k])  # backbone and ASPP, all of it
    assert model.init_report.fresh == [] and model.init_report.dropped == []
    other = build_deeplab("resnet101", 7, init=str(path), quiet=True)  # another label count: a fresh ASPP
    assert len(other.init_report.fresh) == 8 and len(other.init_report.dropped) == 8


def test_an_unknown_key_in_a_deeplab_pytorch_file_is_one_line(tmp_path):
    path = tmp_path / "deeplabv1_resnet101-coco.pth"
    state = official_deeplab.DeepLabV1(n_classes=91).state_dict()
    state["layer6.block1.reduce.conv.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(L2GError, match="unexpected parameter layer6.block1.reduce.conv.weight") as error:
        build_deeplab("resnet101", 21, init=str(path))
    assert "\n" not in str(error.value)


def test_the_imagenet_init_of_the_coco_recipe_loads_its_backbone(tmp_path):
    """coco_resnet_dplv2.yaml INIT_MODEL deeplabv1_resnet101-imagenet.pth: the ImageNet ResNet-101
    (resnet.py lines 113-124: layer1..layer5 and a Linear fc of 1000 classes)."""
    path = tmp_path / "deeplabv1_resnet101-imagenet.pth"
    torch.manual_seed(2)
    state = official_deeplab.with_statistics(official_deeplab.ResNet(1000), seed=2).state_dict()
    torch.save(state, path)
    model = build_deeplab("resnet101", 81, init=str(path), quiet=True)
    assert set(_official_names(model, state).values()) == {k for k in state if not k.startswith("fc.")
                                                           and "num_batches" not in k}
    assert model.init_report.dropped == ["fc.weight", "fc.bias"]


def official_msc_loss(logits, labels):
    """The loss of main.py lines 241-247 with resize_labels (lines 70-83): every MSC output against
    the labels resized to it with PIL's NEAREST, the cross entropies (ignore 255) summed."""
    total = 0
    for logit in logits:
        _, _, h, w = logit.shape
        resized = torch.LongTensor(np.stack([
            np.asarray(Image.fromarray(label.float().numpy()).resize((w, h), resample=Image.NEAREST))
            for label in labels]))
        total = total + torch.nn.CrossEntropyLoss(ignore_index=255)(logit, resized)
    return total


def test_msc_loss_is_the_official_sum_at_each_output_size():
    model = build_deeplab("small", 5, rates=[1, 2], msc_scales=[0.5, 0.75]).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 81, 81, generator=generator)
    labels = torch.randint(0, 5, (3, 81, 81), generator=generator)
    labels[:, :10] = 255
    outputs = model(images)
    assert len(outputs) == 4  # 1x, 0.5x, 0.75x and their maximum
    ours = segmentation_loss(outputs, labels, resolution=CONFIG["voc"]["train_seg"]["loss_resolution"])
    torch.testing.assert_close(ours, official_msc_loss(outputs, labels), rtol=1e-6, atol=1e-6)


def official_groups(named_parameters):
    """get_params of main.py lines 48-67 and the SGD of lines 172-192 over deeplab-pytorch names:
    {name: (lr multiplier, weight decay)} of the parameters the optimizer holds: every Conv2d in a
    "layer" module (the stem included) 1x, ASPP weights 10x, ASPP biases 20x without decay;
    BatchNorm parameters are in no group (and stay in eval mode, lines 217-219)."""
    groups = {}
    for name in named_parameters:
        if re.search(r"layer\d+\..*\bconv\.(weight|bias)$", name):
            groups[name] = (1, 5e-4)
        elif "aspp" in name:
            groups[name] = (10, 5e-4) if name.endswith("weight") else (20, 0.0)
    return groups


def test_groups_frozen_set_and_optimizer_are_the_official_ones(converted):
    _, official, model = converted
    model.train()
    section = CONFIG["voc"]["train_seg"]
    settings = stage_settings("train-seg", section)
    optimizer = build_optimizer([model], settings)
    names = {id(p): n for n, p in model.named_parameters()}
    official_name = {f"base.{ours}": name for ours, name in _official_names(model.base, official.base.state_dict()).items()}
    ours = {}
    for group in optimizer.param_groups:
        assert (group["momentum"], group["nesterov"]) == (0.9, False)  # momentum=CONFIG.SOLVER.MOMENTUM only
        for p in group["params"]:
            ours[official_name[names[id(p)]]] = (round(group["lr"] / settings.lr, 9), group["weight_decay"])
    assert ours == official_groups(dict(official.base.named_parameters()))
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


class OfficialPolynomialLR:
    """libs/utils/lr_scheduler.py lines 12-29, stepped as main.py line 261 does after every
    update (scheduler.step(epoch=iteration), iteration from 1): the factor changes only when
    the iteration is a multiple of step_size."""

    def __init__(self, step_size, iter_max, power):
        self.step_size, self.iter_max, self.power, self.factor = step_size, iter_max, power, 1.0

    def step(self, epoch):
        if epoch != 0 and epoch % self.step_size == 0 and epoch <= self.iter_max:
            self.factor = (1 - float(epoch) / self.iter_max) ** self.power


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_poly_learning_rate_of_every_iteration_is_the_official_one(dataset):
    section = CONFIG[dataset]["train_seg"]
    settings = stage_settings("train-seg", section)
    total = section["iterations"]  # ITER_MAX: VOC 20000, COCO 50000
    scheduler = OfficialPolynomialLR(step_size=10, iter_max=total, power=0.9)  # LR_DECAY 10, POLY_POWER 0.9
    official = []
    for iteration in range(1, total + 1):
        official.append(scheduler.factor)  # the lr this iteration's optimizer.step() used
        scheduler.step(iteration)
    ours = [lr_factor(settings, 0, update, total) for update in range(total)]
    np.testing.assert_allclose(ours, official, rtol=1e-12)
    recipe = {"voc": (5, 2, 2.5e-4, 20000), "coco": (20, 1, 2.5e-4, 50000)}[dataset]  # BATCH_SIZE, ITER_SIZE, LR, ITER_MAX
    assert (section["batch_size"], section["accumulate"], section["lr"], section["iterations"]) == recipe
    assert section["crop_size"] == 321 and section["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert section["init"].endswith({"voc": "deeplabv1_resnet101-coco.pth",
                                     "coco": "deeplabv1_resnet101-imagenet.pth"}[dataset])


# --------------------------------------------------------------------------- the prediction CRF


def official_crf_labels(rgb, prob, crf):
    """`main.py crf` (lines 482-492): the dataset's image (libs/datasets/voc.py line 84, cv2.imread
    as float32 BGR; base.py lines 109-113, minus the mean) cast to uint8 and given, with the
    probabilities, to DenseCRF (libs/utils/crf.py lines 23-41: unary_from_softmax, a Gaussian and
    a bilateral kernel, iter_max mean-field steps); the labels are the argmax."""
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as utils

    image = rgb[..., ::-1].astype(np.float32) - np.array(MEAN_BGR, dtype=np.float32)
    image = np.ascontiguousarray(image.transpose(2, 0, 1).astype(np.uint8).transpose(1, 2, 0))
    labels, height, width = prob.shape
    d = dcrf.DenseCRF2D(width, height, labels)
    d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(prob)))
    d.addPairwiseGaussian(sxy=crf["pos_xy_std"], compat=crf["pos_w"])
    d.addPairwiseBilateral(sxy=crf["bi_xy_std"], srgb=crf["bi_rgb_std"], rgbim=image, compat=crf["bi_w"])
    return np.array(d.inference(crf["iterations"])).reshape(labels, height, width).argmax(axis=0)


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_prediction_crf_sees_the_official_image(tmp_path, dataset):
    from l2g_core.stages.label_seg import write_prediction

    section = CONFIG[dataset]["predict_seg"]
    crf = {key: section[key] for key in ("iterations", "pos_w", "pos_xy_std", "bi_w", "bi_xy_std", "bi_rgb_std")}
    rng = np.random.default_rng(0)
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[:, :24] = (90, 140, 60)  # darker than the Caffe mean in every channel: wraps when cast
    rgb[:, 24:] = (200, 120, 180)
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(rgb).save(tmp_path / "JPEGImages" / "img.jpg", quality=95)
    rgb = np.asarray(Image.open(tmp_path / "JPEGImages" / "img.jpg").convert("RGB"))  # the decoded pixels
    prob = torch.softmax(torch.from_numpy(rng.normal(size=(3, 40, 48))).float() * 0.7, dim=0).numpy()

    def ours(kind):
        out = tmp_path / kind
        (out / "no_crf").mkdir(parents=True)
        write_prediction(("img", prob), root=str(tmp_path), out=str(out), crf_params=crf, crf_image_kind=kind)
        return np.asarray(Image.open(out / "img.png"))

    assert section["crf_image"] == "deeplab_pytorch"
    official = official_crf_labels(rgb, prob, crf)
    assert np.array_equal(ours("deeplab_pytorch"), official)
    assert not np.array_equal(ours("rgb"), official)  # the colours the CRF compares do matter here
