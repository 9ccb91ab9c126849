"""Torch datasets over a prepared dataset (results/{dataset}/data/manifest.json)."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import split_ids
from l2g_core.errors import L2GError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalise(rgb):
    """uint8 H x W x 3 -> float tensor 3 x H x W with ImageNet mean and std."""
    return torch.from_numpy(((rgb.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1).copy())


def multi_hot(classes, num_classes):
    vector = torch.zeros(num_classes)
    vector[[c - 1 for c in classes]] = 1.0
    return vector


class LabelledImages(Dataset):
    """Training images resized to input_size x input_size, with multi-hot labels (and saliency).

    Augmentation (flip, colour jitter) draws from a generator seeded by (seed, epoch, index), so a
    sample is the same whatever the worker, order or resumption. Set `epoch` before each epoch.
    """

    def __init__(self, manifest, split, input_size, *, saliency=False, augment=True, seed=0):
        self.layout = VOCLayout(manifest["root"])
        self.ids = split_ids(manifest, split)
        labels = json.loads(Path(manifest["labels"]).read_text())
        self.labels = [multi_hot(labels[i], manifest["num_classes"]) for i in self.ids]
        if saliency and not manifest["has_saliency"]:
            raise L2GError(f"dataset {manifest['name']} has no saliency maps (Sal/); set use_saliency: false")
        self.input_size = input_size
        self.saliency = saliency
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        size = (self.input_size, self.input_size)
        rgb = np.asarray(Image.fromarray(self.layout.load_image(image_id)).resize(size, Image.BILINEAR))
        sample = {"label": self.labels[index], "index": index}
        sal = None
        if self.saliency:
            sal = np.asarray(Image.fromarray(self.layout.load_saliency(image_id)).resize(size, Image.BILINEAR))
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < 0.5:
                rgb = rgb[:, ::-1]
                sal = sal[:, ::-1] if sal is not None else None
            rgb = _colour_jitter(rgb, rng)
        sample["image"] = normalise(rgb)
        if sal is not None:
            sample["saliency"] = torch.from_numpy(np.array(sal, dtype=np.float32))[None]
        return sample


def _colour_jitter(rgb, rng, strength=0.3):
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]."""
    x = rgb.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * brightness
    x = (x - x.mean()) * contrast + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * saturation + gray
    return np.clip(x, 0, 255).astype(np.uint8)


class SegmentationCrops(Dataset):
    """DeepLab training samples: image and label map, randomly scaled, cropped and flipped.

    labels_dir: a folder of label PNGs ID.png (pseudo labels), or None for the ground truth masks.
    Each sample is scaled by a factor drawn from `scale_range` (image bilinear, labels nearest),
    padded to at least crop_size (image with the mean, i.e. 0 after normalisation; labels with
    255, ignored) and cropped to crop_size x crop_size at a random place, then flipped half the
    time. The draws come from a generator seeded by (seed, epoch, index), as in LabelledImages.
    """

    def __init__(self, manifest, split, crop_size, *, labels_dir=None, scale_range=(0.5, 1.5), seed=0):
        self.layout = VOCLayout(manifest["root"])
        self.ids = split_ids(manifest, split)
        self.labels_dir = Path(labels_dir) if labels_dir is not None else None
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.seed = seed
        self.epoch = 0

    def __len__(self):
        return len(self.ids)

    def label_path(self, image_id):
        return self.layout.mask_path(image_id) if self.labels_dir is None else self.labels_dir / f"{image_id}.png"

    def load_label(self, image_id):
        path = self.label_path(image_id)
        try:
            with Image.open(path) as image:
                return np.asarray(image, dtype=np.uint8)
        except OSError as error:
            raise L2GError(f"{path}: cannot read label map ({error})") from None

    def __getitem__(self, index):
        image_id = self.ids[index]
        rgb, label = self.layout.load_image(image_id), self.load_label(image_id)
        if label.shape != rgb.shape[:2]:
            raise L2GError(f"{self.label_path(image_id)}: label map is {label.shape[1]}x{label.shape[0]}, "
                           f"its image {rgb.shape[1]}x{rgb.shape[0]}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale = rng.uniform(*self.scale_range)
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        image = normalise(np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)))
        label = torch.from_numpy(np.asarray(Image.fromarray(label).resize(size, Image.NEAREST), dtype=np.int64))
        c = self.crop_size
        pad_h, pad_w = max(0, c - label.shape[0]), max(0, c - label.shape[1])
        if pad_h or pad_w:
            image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=255)
        top = int(rng.integers(0, label.shape[0] - c + 1))
        left = int(rng.integers(0, label.shape[1] - c + 1))
        image, label = image[:, top:top + c, left:left + c], label[top:top + c, left:left + c]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return {"image": image.contiguous(), "label": label.contiguous(), "index": index}
