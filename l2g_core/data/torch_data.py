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
