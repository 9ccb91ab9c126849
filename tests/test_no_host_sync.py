"""The L2G and DeepLab training steps never make the host wait for the device.

On a GPU, a read of a device value by the host (`.item()`, `int()`, `.tolist()`, `.cpu()`, an
`if tensor:` ...) or a blocking host-to-device copy stalls the host until the device has run
everything queued: with one per step, the host can no longer queue the next step while the device
computes. `python -m bench --gpu` checks it with torch.cuda.set_sync_debug_mode("error"); here the
same holds on the CPU: the "device" is the meta device (tensors without data, so any read of a
device value fails there too) and `NoHostSync`, a TorchFunctionMode, fails on every value read of a
device tensor and on every host-to-device copy that is not queued (non_blocking=False), and names
it. Host tensors (the crop boxes drawn from a CPU generator) may be read freely: that is no sync.
"""

import argparse

import pytest
import torch
from torch.overrides import TorchFunctionMode

from l2g_core.models import build_classifier
from l2g_core.models.deeplab import build_deeplab, segmentation_loss
from l2g_core.runtime import Runtime, to_device
from l2g_core.stages import train_l2g

DEVICE = torch.device("meta")
# Tensor methods that hand a tensor's values to the host
READS = {"item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__", "__array__",
         "__format__", "__repr__"}


class HostSync(AssertionError):
    pass


def _target_device(args, kwargs):
    """The device of a Tensor.to(...) call, or None when it only changes the dtype or layout."""
    device = kwargs.get("device")
    for arg in args[1:]:
        if isinstance(arg, (str, torch.device)):
            device = arg
        elif isinstance(arg, torch.Tensor):
            device = arg.device
    return None if device is None else torch.device(device)


class NoHostSync(TorchFunctionMode):
    """Fail on a read of a device (meta) tensor's values and on a blocking host-to-device copy."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in READS and any(t.device == DEVICE for t in tensors):
            raise HostSync(f"the host reads a device tensor: Tensor.{name}")
        if name == "to" and tensors:
            target = _target_device(args, kwargs)
            if target is not None and target != args[0].device:
                if args[0].device == DEVICE:
                    raise HostSync("a device tensor copied to the host: Tensor.to")
                if not kwargs.get("non_blocking", False):
                    raise HostSync("a blocking host-to-device copy: Tensor.to without non_blocking=True")
        if name == "copy_" and len(tensors) == 2 and tensors[0].device != tensors[1].device \
                and not kwargs.get("non_blocking", len(args) > 2 and args[2]):
            raise HostSync("a blocking copy between host and device: Tensor.copy_")
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]) == DEVICE:
            raise HostSync(f"host data copied to the device, blocking: torch.{name}(..., device=...)")
        return func(*args, **kwargs)


def test_the_guard_catches_every_host_read_and_blocking_copy():
    on_device = torch.ones(2, device=DEVICE)
    host = torch.ones(2)
    reads = [lambda: on_device.sum().item(), lambda: int(on_device[0]), lambda: float(on_device[0]),
             lambda: bool(on_device[0]), lambda: on_device.tolist(), lambda: on_device.cpu(),
             lambda: on_device.to("cpu"), lambda: host.to(DEVICE), lambda: torch.tensor([1, 2], device=DEVICE),
             lambda: [0, 1][on_device.long()[0]]]
    with NoHostSync():
        for read in reads:
            with pytest.raises(HostSync):
                read()
        # allowed: reads of host tensors, queued copies, work on the device
        assert int(host[0]) == 1 and host.tolist() == [1.0, 1.0]
        assert to_device(host, DEVICE).device == DEVICE and (on_device * 2).device == DEVICE


def _l2g_options(**changes):
    """train-l2g's options: the voc recipe's choices at a small size."""
    parser = argparse.ArgumentParser()
    train_l2g.configure(parser)
    args = ["--manifest", "-", "--out", "-", "--input-size", "64", "--crop-size", "32", "--num-crops", "6",
            "--epochs", "1", "--batch-size", "2", "--lr", "0.001", "--bg-thr", "0.001"]
    options = parser.parse_args(args)
    for key, value in changes.items():
        setattr(options, key, value)
    return options


@pytest.mark.parametrize("changes", [
    {},  # the voc recipe: corners, saliency, background channel, legacy roi_align, nearest saliency
    {"crop_layout": "random", "background": "channel_score", "bg_thr": 0.1},  # the coco recipe
    {"background": "complement", "roi_align": "aligned", "saliency_resize": "area", "global_cls_weight": 1.0},
    {"background": "saliency", "ignore_empty": True},
    {"background": "threshold", "use_saliency": False},
])
def test_an_l2g_step_never_makes_the_host_wait(changes):
    options = _l2g_options(**changes)
    torch.manual_seed(0)
    net_g = build_classifier("small", 4, pcm=True).to(DEVICE).train()
    net_l = build_classifier("small", 4, pcm=True).to(DEVICE).train()
    batch = {"image": torch.empty(2, 3, 64, 64, device=DEVICE), "label": torch.empty(2, 4, device=DEVICE),
             "saliency": torch.empty(2, 1, 64, 64, device=DEVICE)}
    runtime = Runtime(DEVICE)
    with NoHostSync():
        boxes = train_l2g.step_boxes(2, options, torch.Generator().manual_seed(0), runtime)
        losses = train_l2g.l2g_losses(net_g, net_l, batch, boxes, options, net_g.stride)
        losses["loss"].backward()
    assert boxes.device == DEVICE and boxes.shape == (2, 6, 4)


def test_the_boxes_of_a_step_are_the_host_draw_queued_to_the_device():
    # what step_boxes queues is exactly sample_boxes' draw (this process's rows of the global batch)
    options = _l2g_options()
    for rank in (0, 1):
        runtime = Runtime(torch.device("cpu"), rank=rank, world_size=2)
        boxes = train_l2g.step_boxes(2, options, torch.Generator().manual_seed(5), runtime)
        drawn = train_l2g.sample_boxes(4, 6, 32, 64, torch.Generator().manual_seed(5), corners=True)
        assert torch.equal(boxes, drawn[rank::2])


@pytest.mark.parametrize("resolution", ["logits", "labels"])
def test_a_deeplab_msc_step_never_makes_the_host_wait(resolution):
    torch.manual_seed(0)
    model = build_deeplab("small", 5, rates=(2, 4), msc_scales=(0.5, 0.75)).to(DEVICE).train()
    images = torch.empty(2, 3, 57, 57, device=DEVICE)  # an odd size: every MSC output has its own size
    labels = torch.empty(2, 57, 57, dtype=torch.long, device=DEVICE)
    with NoHostSync():
        for _ in range(2):  # the first micro-step fills the per-device index cache, the second reuses it
            outputs = model(images)
            loss = segmentation_loss(outputs, labels, resolution=resolution)
            loss.backward()
    assert len(outputs) == 4 and loss.device == DEVICE
