"""DeepLab-v2: ASPP, output stride, MSC, the loss, checkpoints (deeplab-pytorch names, val refusal)."""

import pytest
import torch
import torch.nn.functional as F

from l2g_core.errors import L2GError
from l2g_core.models.deeplab import MSC, build_deeplab, segmentation_loss
from l2g_core.training import TrainSettings, lr_factor

import official_deeplab


@pytest.fixture(scope="module")
def resnet101():
    return build_deeplab("resnet101", 21).eval()


def test_resnet101_aspp_and_output_stride_8(resnet101):
    aspp = resnet101.aspp
    convs = [getattr(aspp, f"c{i}") for i in range(4)]
    assert [c.dilation for c in convs] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(c.kernel_size == (3, 3) and c.in_channels == 2048 and c.out_channels == 21 for c in convs)
    with torch.no_grad():
        x = torch.randn(1, 3, 96, 80)
        logits = resnet101(x)
        features = resnet101.backbone(x)
    assert features.shape == (1, 2048, 12, 10) and logits.shape == (1, 21, 12, 10)
    # the four branches are summed (DeepLab-v2), not concatenated
    with torch.no_grad():
        assert torch.allclose(logits, sum(c(features) for c in convs), atol=1e-5)
    assert resnet101.build_args == {"backbone": "resnet101", "num_labels": 21, "rates": [6, 12, 18, 24],
                                    "msc_scales": None, "output_stride": 8, "caffe": False, "freeze_bn": True}


def test_param_groups_give_the_head_its_own_groups(resnet101):
    backbone_w, backbone_b, head_w, head_b = resnet101.param_groups()
    assert len(head_w) == 4 and len(head_b) == 4
    assert all(p.dim() == 4 for p in head_w) and all(p.dim() == 1 for p in head_b)
    assert len(backbone_w) + len(backbone_b) + 8 == sum(1 for p in resnet101.parameters() if p.requires_grad)


def test_msc_returns_every_scale_and_their_maximum_in_training():
    model = build_deeplab("small", 7, rates=[1, 2], msc_scales=[0.5, 0.75])
    assert isinstance(model, MSC)
    x = torch.randn(2, 3, 64, 64)
    outputs = model.train()(x)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(8, 8), (4, 4), (6, 6), (8, 8)]
    with torch.no_grad():
        fused = model.eval()(x)
        parts = [model.base(x)] + [F.interpolate(model.base(F.interpolate(x, scale_factor=s, mode="bilinear")),
                                                 size=(8, 8), mode="bilinear") for s in (0.5, 0.75)]
    assert torch.allclose(fused, torch.stack(parts).amax(0), atol=1e-5)


def test_loss_ignores_255_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, :2] = 255
    loss = segmentation_loss(logits, labels)
    keep = labels != 255
    by_hand = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert torch.allclose(loss, by_hand)
    changed = logits.clone()
    changed[0, :, :2] += 100.0  # anything on the ignored pixels
    assert torch.allclose(segmentation_loss(changed, labels), loss)
    # a list (MSC) sums the losses of its maps, as deeplab-pytorch's main.py does
    assert torch.allclose(segmentation_loss([logits, logits], labels), 2 * loss)


def test_poly_schedule_over_iterations():
    settings = TrainSettings(epochs=None, iterations=20000, batch_size=5, lr=2.5e-4, schedule="poly")
    assert [lr_factor(settings, 0, k, 20000) for k in (0, 10000, 19999)] == pytest.approx(
        [1.0, 0.5 ** 0.9, (1 / 20000) ** 0.9])


def test_deeplab_pytorch_checkpoint_loads_with_caffe_conventions(tmp_path):
    """A file as deeplab-pytorch writes it (tests/official_deeplab.py) switches the model to the
    Caffe conventions; the values are checked in test_parity_deeplab.py."""
    path = tmp_path / "deeplabv1_resnet101-coco.pth"
    torch.save(official_deeplab.DeepLabV1(n_classes=91).state_dict(), path)
    model = build_deeplab("resnet101", 21, init=str(path), quiet=True)
    assert model.caffe and model.build_args["caffe"]
    first = model.backbone.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # Caffe: stride in the 1x1
    assert model.backbone.maxpool.ceil_mode
    assert all(not m.training for m in model.train().backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not build_deeplab("resnet101", 21).caffe  # torchvision conventions otherwise


def test_backbone_from_a_classifier_file(tmp_path):
    from l2g_core.model_io import save_classifier
    from l2g_core.models import build_classifier

    classifier = build_classifier("small", 6)
    path = tmp_path / "cls.pt"
    save_classifier(path, classifier, stage="cls", class_names=list("abcdef"), settings={})
    model = build_deeplab("small", 7, rates=[1, 2], init=str(path), freeze_bn=False)
    assert torch.equal(model.backbone.stage4[1][0].weight, classifier.stage4[1][0].weight)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name, content", [
    ("train2_iter_20000.pth", {}),
    ("init.pth", {"trained_on": {"dataset": "voc", "split": "val"}}),
    ("init.pth", {"split": "trainval_aug"}),
])
def test_a_checkpoint_trained_on_voc_val_is_refused(tmp_path, name, content):
    path = tmp_path / name
    torch.save({"state_dict": build_deeplab("small", 7, rates=[1]).state_dict(), **content}, path)
    with pytest.raises(L2GError, match="refusing to initialise DeepLab") as error:
        build_deeplab("small", 7, rates=[1], init=str(path))
    assert "val" in str(error.value) and "\n" not in str(error.value)
