"""The L2G method as pure tensor functions: crops, local attention targets, transfer loss.

Shapes: B images, N crops per image, M = B * N crops, C foreground classes, and C + 1 CAM
channels with the background channel last (as in the official model's fc8).

The official formulation (scripts/train_l2g_sal_voc.py of the L2G code) and the options that
handle its weak points are documented in docs/l2g_method.md.
"""

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

EPS = 1e-8


def sample_boxes(num_images, num_crops, crop_size, image_size, generator=None, *, corners=False):
    """Square crop boxes (x1, y1, x2, y2) in pixels, shape (num_images, num_crops, 4).

    corners=False: every box at a random position. corners=True (the official VOC loader,
    VOCDataset_l2g_sal_crop): the first four boxes sit in the four corners of the image, so the
    crops cover all of it at every step whenever crop_size >= image_size / 2, and the rest are
    random; it needs num_crops >= 4.
    """
    if crop_size > image_size:
        raise ValueError(f"crop size {crop_size} is larger than the input size {image_size}")
    if corners and num_crops < 4:
        raise ValueError(f"corner crops need at least 4 crops per image, got {num_crops}")
    far = image_size - crop_size  # the largest top-left coordinate
    # random corners in [0, far), as the official np.random.randint(0, max_range) draws them
    top_left = torch.randint(0, max(far, 1), (num_images, num_crops, 2), generator=generator)
    if corners:
        top_left[:, :4] = torch.tensor([[0, 0], [0, far], [far, 0], [far, far]])
    return torch.cat([top_left, top_left + crop_size], dim=-1)


def crop_batch(images, boxes, crop_size):
    """Cut every box out of its image without a Python loop: (B, K, H, W), (B, N, 4) -> (B*N, K, c, c).

    Every box is `crop_size` pixels square (sample_boxes). The size is given, not read from the
    boxes: on a GPU that read would make the host wait for the device at every step. `boxes`
    must be on the images' device (l2g_core.runtime.to_device)."""
    num_images, num_crops, _ = boxes.shape
    offsets = torch.arange(crop_size, device=images.device)
    flat = boxes.reshape(-1, 4)
    rows = flat[:, 1, None] + offsets  # (M, c)
    cols = flat[:, 0, None] + offsets
    owner = torch.arange(num_images, device=images.device).repeat_interleave(num_crops)
    # images[owner, :, rows, cols] with broadcasting -> (M, c, c, K)
    crops = images.permute(0, 2, 3, 1)[owner[:, None, None], rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()


def boxes_to_rois(boxes):
    """(B, N, 4) pixel boxes -> (B*N, 5) float rois (image index, x1, y1, x2, y2) for roi_align."""
    num_images, num_crops, _ = boxes.shape
    owner = torch.arange(num_images, device=boxes.device).repeat_interleave(num_crops)
    return torch.cat([owner[:, None], boxes.reshape(-1, 4)], dim=1).float()


def normalise_cams(cams):
    """ReLU, then each channel of each map divided by its spatial maximum."""
    cams = F.relu(cams)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + EPS)


def local_targets(local_cams, labels, saliency=None, *, background="channel", bg_score=0.3, bg_thr=1e-3):
    """Turn the local network's CAMs on crops into targets for the global network.

    local_cams: (M, C+1, h, w) raw CAMs of the crops (background channel last).
    labels: (M, C) multi-hot image-level labels of each crop's image.
    saliency: (M, 1, h, w) saliency in [0, 1] at the CAM resolution, or None.
    background: "channel" uses the local network's own background channel (official VOC: a
        winning background becomes 1 - saliency); "channel_score" (official COCO) the same, but a
        winning background keeps its score, times 1 - saliency, and needs no `bg_thr`;
        "threshold" uses the constant `bg_score` instead, as CAM thresholding does. No loss trains
        the background channel, so "threshold" is the well-defined choice (weak point (b)).
        "saliency" (needs saliency) leaves the background to the saliency map alone: the winner
        is the strongest present class, its target the saliency, the background's 1 - saliency,
        so every pixel's target sums to one (no empty targets, weak point (c)).
        "complement" trusts the local CAM as well: the winner's target is its normalised score s,
        times the saliency where given, and the background's 1 minus that, so a salient region the
        local network does not see as its class (a distractor) gets a weak target; it also works
        without saliency (target s, background 1 - s).

    Steps (one argmax over channels, no loop over images or classes):
    normalise per channel; zero the channels of absent classes; keep, at each pixel, only the
    winning channel. With saliency (official): a winner above `bg_thr` (VOC 1e-3, COCO 0.1)
    becomes the saliency value on a foreground channel and 1 - saliency on the background
    channel. Without saliency: the winner keeps its normalised score. Returns (M, C+1, h, w).
    """
    num_classes = labels.shape[1]
    scores = normalise_cams(local_cams)
    if background in ("saliency", "complement"):
        foreground = scores[:, :num_classes] * labels[:, :, None, None]
        best, winner = foreground.max(dim=1, keepdim=True)
        if background == "complement":
            saliency = best if saliency is None else best * saliency
        elif saliency is None:
            raise ValueError("background='saliency' needs saliency maps")
        one_hot = torch.zeros_like(foreground).scatter_(1, winner, 1.0)
        return torch.cat([one_hot * saliency, 1 - saliency], dim=1)
    present = torch.cat([labels, torch.ones_like(labels[:, :1])], dim=1)  # background always present
    scores = scores * present[:, :, None, None]
    if background == "threshold":
        scores[:, num_classes] = bg_score
    elif background not in ("channel", "channel_score"):
        raise ValueError(f"unknown background mode {background!r}")
    winner = scores.argmax(dim=1, keepdim=True)  # (M, 1, h, w)
    one_hot = torch.zeros_like(scores).scatter_(1, winner, 1.0)
    kept = one_hot * scores
    if saliency is None:
        return kept
    active = (kept > bg_thr).to(kept.dtype)
    foreground = active[:, :num_classes] * saliency
    if background == "channel_score":  # train_l2g_sal_coco.py: the background score itself
        return torch.cat([foreground, kept[:, num_classes:] * (1 - saliency)], dim=1)
    return torch.cat([foreground, active[:, num_classes:] * (1 - saliency)], dim=1)


ROI_ALIGN_MODES = ("legacy", "aligned")


def align_global(global_cams, boxes, output_size, stride, mode="legacy"):
    """The global CAMs under each crop box, at the local CAM resolution, as class probabilities.

    mode "legacy" (official: ops.roi_align(feat, boxes, (h, w), 1 / 8.0) with torchvision's
    defaults aligned=False, adaptive sampling) samples half a feature pixel off the pixel
    centres, so each output averages two neighbouring feature pixels per axis; "aligned"
    (aligned=True, one sample per bin) puts feature pixel i's centre at stride * (i + 0.5), so a
    box on the stride grid reads exactly the feature pixels it covers.
    """
    rois = boxes_to_rois(boxes).to(global_cams.device, global_cams.dtype)
    if mode == "legacy":
        pooled = roi_align(global_cams, rois, output_size, spatial_scale=1.0 / stride)
    else:
        pooled = roi_align(global_cams, rois, output_size, spatial_scale=1.0 / stride, sampling_ratio=1, aligned=True)
    return F.softmax(pooled, dim=1)


def transfer_loss(global_probs, targets, *, ignore_empty=False):
    """Mean squared error between the aligned global probabilities and the local targets.

    ignore_empty: leave out pixels whose target is all zero; the official loss keeps them, which
    pulls the global softmax there towards uniform (weak point (c)).
    """
    squared = (global_probs - targets) ** 2
    if not ignore_empty:
        return squared.mean()
    valid = (targets.sum(dim=1, keepdim=True) > 0).to(squared.dtype)
    channels = squared.shape[1]
    return (squared * valid).sum() / (valid.sum() * channels).clamp_min(1.0)
