"""Backbones, CAM classifiers, PCM and checkpoint loading (small inputs only: CPU, 2 cores)."""

import os
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from l2g_core.errors import L2GError
from l2g_core.models import (
    ResNet38,
    SmallBackbone,
    build_backbone,
    build_classifier,
    classification_loss,
    extract_state_dict,
    load_state_dict_checked,
    load_weights,
    pixel_correlation,
)

# Names and shapes read from the official code (PengtaoJiang/L2G models/resnet38_base.py and
# models/resnet38.py; identical trunk in jiwoon-ahn/psa network/resnet38d.py), 20 VOC classes.
OFFICIAL_RESNET38 = {
    "conv1a.weight": (64, 3, 3, 3),
    "b2.bn_branch2a.weight": (64,),
    "b2.conv_branch2a.weight": (128, 64, 3, 3),
    "b2.conv_branch2b1.weight": (128, 128, 3, 3),
    "b2.conv_branch1.weight": (128, 64, 1, 1),
    "b2_2.bn_branch2b1.running_mean": (128,),
    "b3.conv_branch1.weight": (256, 128, 1, 1),
    "b4_5.conv_branch2b1.weight": (512, 512, 3, 3),
    "b5.conv_branch2a.weight": (512, 512, 3, 3),
    "b5.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b5.conv_branch1.weight": (1024, 512, 1, 1),
    "b5_2.conv_branch2a.weight": (512, 1024, 3, 3),
    "b6.conv_branch2a.weight": (512, 1024, 1, 1),
    "b6.conv_branch2b1.weight": (1024, 512, 3, 3),
    "b6.bn_branch2b2.running_var": (1024,),
    "b6.conv_branch2b2.weight": (2048, 1024, 1, 1),
    "b6.conv_branch1.weight": (2048, 1024, 1, 1),
    "b7.bn_branch2a.weight": (2048,),
    "b7.conv_branch2a.weight": (1024, 2048, 1, 1),
    "b7.conv_branch2b1.weight": (2048, 1024, 3, 3),
    "b7.conv_branch2b2.weight": (4096, 2048, 1, 1),
    "b7.conv_branch1.weight": (4096, 2048, 1, 1),
    "bn7.weight": (4096,),
    "bn7.running_var": (4096,),
    "fc8.weight": (21, 4096, 1, 1),
    "f8_3.weight": (64, 512, 1, 1),
    "f8_4.weight": (128, 1024, 1, 1),
    "f9.weight": (192, 195, 1, 1),
}


@pytest.fixture(scope="module")
def resnet38():
    torch.manual_seed(0)
    return build_classifier("resnet38", 20, pcm=True)


@pytest.fixture(scope="module")
def tv_resnet50_file(tmp_path_factory):
    """A torchvision-format ResNet-50 state dict (random weights, fc included) on disk."""
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(state, path)
    return path


def _small(num_classes=20, pcm=False, seed=0, **kw):
    torch.manual_seed(seed)
    return build_classifier("small", num_classes, pcm=pcm, **kw)


def _save(tmp_path, model, name="ckpt.pth", wrap="state_dict", prefix="module."):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    path = tmp_path / name
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    return path


# ---------------------------------------------------------------- backbones: shapes and strides


def test_small_backbone_shape():
    net = build_backbone("small").eval()
    assert (net.out_channels, net.stride) == (256, 8)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 256, 8, 8)


@pytest.mark.parametrize("name,stride", [("resnet101", 8), ("resnet101", 16), ("resnet50", 8)])
def test_torchvision_resnet_strides(name, stride):
    torch.manual_seed(0)
    net = build_backbone(name, output_stride=stride).eval()
    assert (net.out_channels, net.stride) == (2048, stride)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 64 // stride, 64 // stride)


def test_bad_backbone_settings():
    with pytest.raises(L2GError, match="unknown"):
        build_classifier("vgg16", 20)
    with pytest.raises(L2GError, match="output_stride"):
        build_backbone("resnet38", output_stride=16)
    with pytest.raises(L2GError, match="output_stride"):
        build_backbone("resnet50", output_stride=4)


def test_resnet38_forward_shapes(resnet38):
    assert resnet38.stride == 8 and resnet38.out_channels == 4096
    resnet38.eval()
    with torch.no_grad():
        out = resnet38(torch.randn(1, 3, 64, 64))
    assert out["logits"].shape == (1, 20)
    assert out["cams"].shape == (1, 21, 8, 8)
    torch.testing.assert_close(out["logits"], out["cams"][:, :20].mean(dim=(2, 3)))


def test_resnet38_official_names(resnet38):
    state = resnet38.state_dict()
    for name, shape in OFFICIAL_RESNET38.items():
        assert name in state, name
        assert tuple(state[name].shape) == shape, name
    # same-shape blocks have no projection shortcut, as in the official ResBlock
    assert "b2_1.conv_branch1.weight" not in state
    assert "b4_5.conv_branch1.weight" not in state
    blocks = {k.split(".")[0] for k in state}
    expected = {"conv1a", "bn7", "fc8", "f8_3", "f8_4", "f9", "b2", "b2_1", "b2_2", "b3", "b3_1",
                "b3_2", "b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5", "b5", "b5_1", "b5_2", "b6",
                "b7"}
    assert blocks == expected
    assert isinstance(resnet38, ResNet38)  # the classifier is the trunk plus head, as official


def test_resnet38_loads_official_checkpoint_layout(resnet38):
    # The official training script saves {'epoch', 'global_counter', 'state_dict', 'local_dict',
    # 'optimizer'} with DataParallel 'module.' names; MXNet-converted weights lack
    # num_batches_tracked.
    state = {
        "module." + k: v for k, v in resnet38.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    new_fc8 = torch.randn(21, 4096, 1, 1)
    new_f9 = torch.randn(192, 195, 1, 1)
    state["module.fc8.weight"] = new_fc8
    state["module.f9.weight"] = new_f9
    ckpt = {"epoch": 9, "global_counter": 1, "state_dict": state, "local_dict": state,
            "optimizer": {"state": {}, "param_groups": []}}
    report = load_state_dict_checked(resnet38, extract_state_dict(ckpt, "voc_epoch_9.pth"),
                                     source="voc_epoch_9.pth")
    assert report.missing == [] and report.unexpected == []
    torch.testing.assert_close(resnet38.fc8.weight.detach(), new_fc8)
    torch.testing.assert_close(resnet38.f9.weight.detach(), new_f9)


def test_wrong_architecture_checkpoint(tmp_path, resnet38):
    path = _save(tmp_path, _small())
    with pytest.raises(L2GError) as info:
        load_weights(resnet38, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: parameter conv1a.weight (64, 3, 3, 3) is missing")


def test_resnet38_freeze_matches_official(resnet38):
    before = {n: p.requires_grad for n, p in resnet38.named_parameters()}
    try:
        resnet38.freeze_pretrained()
        frozen = {n for n, p in resnet38.named_parameters() if not p.requires_grad}
        assert "conv1a.weight" in frozen and "b2_2.conv_branch2b1.weight" in frozen
        assert "b3.conv_branch2a.weight" not in frozen and "fc8.weight" not in frozen
        assert "b7.bn_branch2a.weight" in frozen and "bn7.bias" in frozen
        resnet38.train()
        assert not resnet38.bn7.training and resnet38.b7.dropout_2b1.training
        groups = resnet38.param_groups()
        grouped = [id(p) for g in groups for p in g]
        trainable = [id(p) for p in resnet38.parameters() if p.requires_grad]
        assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
        # official: only conv weights (no biases) in the pretrained group, fc8 + PCM are new
        assert len(groups[1]) == 0 and len(groups[3]) == 0
        assert {id(p) for p in groups[2]} == {
            id(resnet38.fc8.weight), id(resnet38.f8_3.weight), id(resnet38.f8_4.weight),
            id(resnet38.f9.weight)}
    finally:
        resnet38.frozen = False
        for n, p in resnet38.named_parameters():
            p.requires_grad_(before[n])
        resnet38.eval()


# ---------------------------------------------------------------- classifier head, PCM, loss


@pytest.mark.parametrize("pcm", [False, True])
def test_classifier_outputs(pcm):
    model = _small(num_classes=5, pcm=pcm).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"logits", "cams"}
    assert out["logits"].shape == (2, 5)
    assert out["cams"].shape == (2, 6, 8, 8)
    assert model.stride == 8
    torch.testing.assert_close(out["logits"], out["cams"][:, :5].mean(dim=(2, 3)))
    assert hasattr(model, "f9") == pcm
    assert model.fc8.bias is None


def test_pcm_output_is_cam_plus_refined_cam():
    model = _small(num_classes=3, pcm=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        cam = model.fc8(feats["out"])
        # official: featmap = fc8(conv6) + fc8(PCM(conv6, f)); fc8 is linear so PCM(fc8(conv6))
        official = cam + model.fc8(pixel_correlation(feats["out"], model.pcm_embedding(x, feats)))
    torch.testing.assert_close(out["cams"], official, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out["cams"], cam)


def test_pixel_correlation_is_affinity_average():
    torch.manual_seed(0)
    cams = torch.randn(1, 2, 3, 3)
    emb = torch.randn(1, 4, 3, 3)
    e = emb.flatten(2)[0]
    e = e / (e.norm(dim=0, keepdim=True) + 1e-5)
    aff = torch.relu(e.T @ e)  # aff[i, j]
    ref = (cams.flatten(2)[0] @ (aff / (aff.sum(0, keepdim=True) + 1e-5))).reshape(1, 2, 3, 3)
    torch.testing.assert_close(pixel_correlation(cams, emb), ref)
    # constant CAM stays constant (columns of the affinity sum to one)
    const = torch.full((1, 1, 3, 3), 2.0)
    torch.testing.assert_close(pixel_correlation(const, emb), const, rtol=1e-4, atol=1e-4)


def test_classification_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    labels = torch.tensor([[1, 0, 1]])
    s = torch.sigmoid(logits)
    ref = -(labels * s.log() + (1 - labels) * (1 - s).log()).mean()
    torch.testing.assert_close(classification_loss(logits, labels), ref)


@pytest.mark.parametrize("pcm", [False, True])
def test_param_groups_cover_trainable_once(pcm):
    model = _small(pcm=pcm)
    groups = model.param_groups()
    assert len(groups) == 4
    grouped = [id(p) for g in groups for p in g]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    new = {id(p) for n in ("fc8", "f8_3", "f8_4", "f9") if hasattr(model, n)
           for p in getattr(model, n).parameters()}
    assert {id(p) for p in groups[2] + groups[3]} == new
    assert all(p.dim() == 1 for p in groups[1])  # BN shifts


def test_small_receptive_field():
    net = SmallBackbone().eval()
    rf = net.receptive_field
    assert 60 <= rf <= 90
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    net(x)[0, :, 10, 10].sum().backward()
    rows, cols = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero(as_tuple=True)
    centre, half = 10 * net.stride, rf // 2
    assert rows.min() >= centre - half and rows.max() <= centre + half
    assert cols.min() >= centre - half and cols.max() <= centre + half
    # and the claim is tight, not just an upper bound
    assert rows.max() - rows.min() + 1 == rf and cols.max() - cols.min() + 1 == rf


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("wrap,prefix", [("state_dict", "module."), ("model", ""), (None, "")])
def test_checkpoint_roundtrip(tmp_path, wrap, prefix):
    model = _small(pcm=True, seed=1).eval()
    path = _save(tmp_path, model, wrap=wrap, prefix=prefix)
    other = _small(pcm=True, seed=2).eval()
    x = torch.randn(1, 3, 64, 64)
    load_weights(other, path)
    with torch.no_grad():
        a, b = model(x), other(x)
    torch.testing.assert_close(a["cams"], b["cams"])
    torch.testing.assert_close(a["logits"], b["logits"])


def test_wrong_class_count(tmp_path):
    path = _save(tmp_path, _small(num_classes=20))
    with pytest.raises(L2GError) as info:
        load_weights(_small(num_classes=6), path)
    assert str(info.value).startswith(
        f"{path}: parameter fc8.weight has shape (21, 256, 1, 1), model expects (7, 256, 1, 1)")


def test_pcm_mismatch_errors_name_parameter(tmp_path):
    path = _save(tmp_path, _small(pcm=True))
    with pytest.raises(L2GError, match=r"ckpt\.pth: unexpected parameter f8_3\.weight.*pcm=True"):
        load_weights(_small(pcm=False), path)
    report = load_weights(_small(pcm=False), path, strict=False)
    assert "f9.weight" in report.unexpected
    path = _save(tmp_path, _small(pcm=False), name="plain.pth")
    with pytest.raises(L2GError, match=r"plain\.pth: parameter f8_3\.weight .*missing.*pcm=False"):
        load_weights(_small(pcm=True), path)


def test_bad_checkpoint_files(tmp_path):
    model = _small()
    with pytest.raises(L2GError, match="nothere.pth: checkpoint file not found"):
        load_weights(model, tmp_path / "nothere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(L2GError, match="junk.pth: not a torch checkpoint"):
        load_weights(model, junk)
    mxnet = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    mxnet.write_bytes(b"\x12\x01\x00\x00\x00\x00\x00\x00junk")
    with pytest.raises(L2GError, match=r"\.params: not a torch checkpoint .*MXNet"):
        load_weights(model, mxnet)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(L2GError, match="list.pth: not a checkpoint"):
        load_weights(model, notdict)
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": model.state_dict(), "cfg": os.stat_result((0,) * 10)}, pickled)
    with pytest.raises(L2GError, match="pickled.pth: .*allow_pickle"):
        load_weights(model, pickled)
    load_weights(model, pickled, allow_pickle=True)


# ---------------------------------------------------------------- initialisation


def test_init_errors(tmp_path):
    with pytest.raises(L2GError, match="unknown torchvision weights for resnet50"):
        build_backbone("resnet50", init="IMAGENET1K_V9")
    with pytest.raises(L2GError, match="torchvision weights exist only"):
        build_classifier("small", 3, init="IMAGENET1K_V1")
    with pytest.raises(L2GError, match="init checkpoint file not found"):
        build_classifier("small", 3, init=str(tmp_path / "weights.pth"))


def test_init_from_local_checkpoint(tv_resnet50_file):
    state = torch.load(tv_resnet50_file, weights_only=True)
    model = build_classifier("resnet50", 4, init=tv_resnet50_file)  # fc.* of the file ignored
    torch.testing.assert_close(model.layer3[1].conv2.weight.detach(),
                               state["layer3.1.conv2.weight"])
    torch.testing.assert_close(model.bn1.running_var, state["bn1.running_var"])
    # pretrained init: stem and BatchNorm frozen, BN kept in eval mode by train()
    assert not model.conv1.weight.requires_grad and not model.layer1[0].bn1.weight.requires_grad
    assert model.layer1[0].conv1.weight.requires_grad and model.fc8.weight.requires_grad
    model.train()
    assert model.training and not model.layer2[0].bn1.training
    grouped = {id(p) for g in model.param_groups() for p in g}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_init_from_torchvision_weights_name(tv_resnet50_file, tmp_path, monkeypatch):
    # Served from a fake torch hub cache, so nothing is downloaded.
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / os.path.basename(urlparse(url).path)).symlink_to(tv_resnet50_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    state = torch.load(tv_resnet50_file, weights_only=True)
    net = build_backbone("resnet50", init="IMAGENET1K_V1", output_stride=16)
    torch.testing.assert_close(net.layer4[0].conv2.weight.detach(), state["layer4.0.conv2.weight"])
    assert net.frozen


def test_small_init_from_classifier_checkpoint(tmp_path):
    source = _small(num_classes=20, pcm=True, seed=3)
    path = _save(tmp_path, source)
    model = _small(num_classes=2, seed=4, init=path)  # head of the file is ignored
    torch.testing.assert_close(model.stage4[1][0].weight.detach(),
                               source.stage4[1][0].weight.detach())
    assert model.fc8.weight.shape == (3, 256, 1, 1)
    assert not model.stage1[0][1].weight.requires_grad  # BN frozen with a pretrained init
    small_free = _small(num_classes=2, seed=4, init=path, freeze=False)
    assert all(p.requires_grad for p in small_free.parameters())
