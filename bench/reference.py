"""REFERENCE SIDES of the comparisons: straightforward re-implementations, written for this
benchmark, of the way the official L2G scripts (github.com/PengtaoJiang/L2G) do the same work.
None of the official code is copied; each function follows the structure of one script:

    reference_evaluate   scripts/evaluate_mthr_voc.py: for each threshold, for each image, read
                         the ground truth and one 8-bit PNG per present class, stack a
                         (C + 1, H, W) score array with the threshold as background, argmax,
                         histogram; mIoU = nanmean of the IoUs
    reference_export     scripts/test_l2g_voc.py: one image at a time, one scale (and its flip)
                         per forward pass, maps moved to numpy, flipped back, aggregated, divided
                         by their maximum and written as one PNG per present class
    reference_crops, reference_rois, reference_targets, reference_step
                         scripts/train_l2g_sal_voc.py: crops cut image by image (the data loader's
                         way), roi batch indices built per image, local targets with a loop over
                         images to zero absent classes and a sort over classes (argsort, then
                         one-hot rows of an identity matrix) to keep the winner

The pipeline now computes the official maths (docs/reproduction.md; tests/test_parity_*.py), so
the references follow the official scripts in every step that changes numbers: bicubic resizing,
the mean over scales and flips then ReLU, maxima + 1e-8, nearest saliency resizing, the legacy
roi_align; only a stable sort replaces the official unstable one (ties to the lowest channel, as
argmax), which changes nothing but the order of equal zeros.
"""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# Item 1: threshold-sweep evaluation (scripts/evaluate_mthr_voc.py style)


class ReferenceIoU:
    """Confusion histogram accumulated image by image (the official IOUMetric's way)."""

    def __init__(self, num_labels):
        self.num_labels = num_labels
        self.hist = np.zeros((num_labels, num_labels))

    def add(self, pred, gt):
        pred, gt = pred.flatten(), gt.flatten()
        mask = (gt >= 0) & (gt < self.num_labels) & (pred < self.num_labels)
        self.hist += np.bincount(self.num_labels * gt[mask].astype(int) + pred[mask],
                                 minlength=self.num_labels ** 2).reshape(self.num_labels, self.num_labels)

    def miou(self):
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.diag(self.hist) / (self.hist.sum(axis=1) + self.hist.sum(axis=0) - np.diag(self.hist))
        return float(np.nanmean(iou)), iou


def write_label_list(path, ids, labels):
    """The official train_cls.txt: `ID c1 c2 ...` with 0-based class indices."""
    Path(path).write_text("".join(f"{i} {' '.join(str(c - 1) for c in labels[i])}\n" for i in ids))


def reference_evaluate(gt_dir, cam_dir, label_list, thresholds, num_classes, save_path):
    """[(threshold, mIoU)] of CAM PNGs (cam_dir/ID_{c}.png) against gt_dir/ID.png."""
    lines = [line.split() for line in Path(label_list).read_text().splitlines() if line.strip()]
    ids = [line[0] for line in lines]
    label_lst = [line[1:] for line in lines]
    Path(save_path).write_text("")
    results = []
    for bg_thr in thresholds:
        metric = ReferenceIoU(num_classes + 1)
        for index, image_id in enumerate(ids):
            gt = np.array(Image.open(os.path.join(gt_dir, image_id + ".png")), dtype=np.int32)
            height, width = gt.shape
            pred = np.zeros((num_classes + 1, height, width), np.float32)
            pred[0] = bg_thr
            for la in label_lst[index]:
                la = int(la)
                att = np.asarray(Image.open(os.path.join(cam_dir, f"{image_id}_{la}.png"))) / 255.0
                pred[la + 1] = att
            pred = np.argmax(pred, axis=0).astype(np.uint8)
            metric.add(pred, gt)
        miou, iou = metric.miou()
        with open(save_path, "a") as handle:
            json.dump({"Threshold": bg_thr, "Mean IoU": miou, "IoU": [None if np.isnan(v) else v for v in iou]}, handle)
        results.append((bg_thr, miou))
    return results


# ---------------------------------------------------------------------------------------------
# Item 2: CAM export (scripts/test_l2g_voc.py style)


def to_png_level(norm_cam):
    """What writing norm_cam * 255 to an 8-bit PNG stores (rounded, saturated)."""
    return np.clip(np.rint(norm_cam * 255.0), 0, 255).astype(np.uint8)


def reference_export(model_path, root, ids, labels, scales, flip, out_dir, device, keep_maps=False):
    """One PNG per present class (out_dir/ID_{c - 1}.png) for each image; with keep_maps, also
    return {id: (classes, float maps)} of the values before 8-bit quantisation."""
    import torch
    import torch.nn.functional as F

    from l2g_core.data.layout import VOCLayout
    from l2g_core.data.augment import normalise
    from l2g_core.model_io import load_classifier

    model, _ = load_classifier(model_path)
    model.to(device).eval()
    layout = VOCLayout(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = {}
    with torch.no_grad():
        for image_id in ids:
            rgb = layout.load_image(image_id)
            height, width = rgb.shape[:2]
            image = Image.fromarray(rgb)
            cam_list = []
            for scale in scales:
                scaled = image.resize((int(round(width * scale)), int(round(height * scale))), Image.BICUBIC)
                tensor = torch.from_numpy(normalise(np.asarray(scaled)))[None].to(device)
                for flipped in ((False, True) if flip else (False,)):
                    cams = model(tensor.flip(-1) if flipped else tensor)["cams"].float()
                    cams = F.interpolate(cams, size=(height, width), mode="bicubic", align_corners=False)[0]
                    cam_np = cams.cpu().numpy()
                    if flipped:
                        cam_np = np.flip(cam_np, axis=-1)
                    cam_list.append(cam_np)
            cam_np = np.mean(cam_list, axis=0)
            cam_np[cam_np < 0] = 0
            norm_cam = cam_np / (np.max(cam_np, (1, 2), keepdims=True) + 1e-8)
            classes = labels[image_id]
            for c in classes:
                Image.fromarray(to_png_level(norm_cam[c - 1]), mode="L").save(out_dir / f"{image_id}_{c - 1}.png")
            if keep_maps:
                kept[image_id] = (list(classes), norm_cam[[c - 1 for c in classes]])
    return kept


# ---------------------------------------------------------------------------------------------
# Item 4: one L2G training step (scripts/train_l2g_sal_voc.py style)


def reference_crops(images, boxes):
    """(B*N, K, c, c): each box cut out of its image, one at a time."""
    import torch

    crops = []
    for b in range(boxes.shape[0]):
        for n in range(boxes.shape[1]):
            x1, y1, x2, y2 = (int(v) for v in boxes[b, n])
            crops.append(images[b, :, y1:y2, x1:x2])
    return torch.stack(crops)


def reference_rois(boxes):
    """(B*N, 5) rois; batch indices filled image by image."""
    import torch

    bs, bxs, _ = boxes.shape
    box_ind = torch.cat([torch.zeros(bxs).fill_(i) for i in range(bs)])
    rois = torch.zeros(bs * bxs, 5)
    rois[:, 1:] = boxes.reshape(bs * bxs, 4).float()
    rois[:, 0] = box_ind
    return rois


def reference_targets(feat_local, label, num_crops, crop_sals, bg_thr=1e-3):
    """Local targets: normalise, zero absent classes image by image, keep the winning channel
    found by a sort over classes, gate with saliency. feat_local (B*N, C+1, h, w) detached;
    label (B, C); crop_sals (B*N, 1, h, w) at the CAM size."""
    import torch

    x = feat_local.clone()
    x[x < 0] = 0
    peak = torch.max(torch.max(x, dim=3)[0], dim=2)[0]
    x = x / (peak.unsqueeze(2).unsqueeze(3) + 1e-8)
    for i in range(label.shape[0]):
        ind = torch.nonzero(label[i] == 0)
        x[i * num_crops:(i + 1) * num_crops, ind] = 0
    n, c, h, w = x.shape
    flat = x.permute(1, 0, 2, 3).reshape(c, -1)
    order = torch.argsort(-flat, dim=0, stable=True)
    pos = torch.eye(c, device=x.device)[order[0]].transpose(0, 1).type_as(flat)
    x = (pos * flat).reshape(c, n, h, w).permute(1, 0, 2, 3)
    active = (x > bg_thr).type_as(x)
    x[:, :-1] = active[:, :-1] * crop_sals.repeat(1, c - 1, 1, 1)
    x[:, -1] = active[:, -1] * (1 - crop_sals).squeeze(1)
    return x


def reference_step(net_g, net_l, optimizer, batch, boxes, *, kd_weight, stride, bg_thr=1e-3):
    """One official-style L2G update (saliency targets, local classification loss); returns the
    loss terms as floats."""
    import torch
    import torch.nn.functional as F
    from torchvision import ops

    images, label, sal = batch["image"], batch["label"], batch["saliency"]
    boxes = boxes.cpu()  # official: boxes and crops come from the data loader, on the CPU
    bs, bxs = boxes.shape[:2]
    crop_imgs = reference_crops(images, boxes)
    crop_sals = reference_crops(sal, boxes)
    local_label = torch.stack([label[b] for b in range(bs) for _ in range(bxs)])
    rois = reference_rois(boxes).to(images.device)

    out_g = net_g(images)
    out_l = net_l(crop_imgs)
    feat, logits = out_g["cams"], out_g["logits"]
    feat_local, logits_local = out_l["cams"], out_l["logits"]
    h, w = feat_local.shape[-2:]
    crop_sals = F.interpolate(crop_sals, (h, w))
    targets = reference_targets(feat_local.detach().float(), label, bxs, crop_sals, bg_thr)
    feat_aligned = ops.roi_align(feat.float(), rois.type_as(feat).float(), (h, w), 1.0 / stride)
    feat_aligned = F.softmax(feat_aligned, dim=1)
    loss_kd = F.mse_loss(feat_aligned, targets) * kd_weight
    loss_cls_global = F.multilabel_soft_margin_loss(logits.float(), label)  # computed, not added (official)
    loss_cls_local = F.multilabel_soft_margin_loss(logits_local.float(), local_label)
    loss = loss_kd + loss_cls_local
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return {"loss": loss.item(), "kd": loss_kd.item(), "cls_local": loss_cls_local.item(),
            "cls_global": loss_cls_global.item()}
