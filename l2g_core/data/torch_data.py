"""Torch datasets over a prepared dataset (results/{dataset}/data/manifest.json)."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate

from l2g_core.data.augment import (
    IMAGE_STATS,
    apply_jitter,
    apply_jitter_float,
    crop_box,
    draw_jitter,
    resize_short,
    short_size,
)
from l2g_core.data.augment import normalise as normalise_array
from l2g_core.data.gpu_augment import make_batch
from l2g_core.data.layout import VOCLayout
from l2g_core.data.manifest import split_ids
from l2g_core.errors import L2GError

MEAN, STD = (np.array(v, dtype=np.float32) for v in IMAGE_STATS["imagenet"])
RESIZE_MODES = ("warp", "short_crop")
# Where the classifier and L2G inputs are decoded and shaped: "cpu" in the loader workers (PIL);
# "gpu" on the training device (the CPU when training there), the workers only reading the files
# and drawing (gpu_augment), for machines with too few cores per GPU to feed it.
DECODE_MODES = ("cpu", "gpu")
# The keys of a raw sample (decode gpu) that do not stack: per-image sizes, and the draws.
RAW_KEYS = ("encoded", "saliency_u8", "draws")


def normalise(rgb, stats="imagenet"):
    """uint8 H x W x 3 RGB -> float tensor 3 x H x W, normalised with `stats` (IMAGE_STATS)."""
    return torch.from_numpy(normalise_array(rgb, stats))


def multi_hot(classes, num_classes):
    vector = torch.zeros(num_classes)
    vector[[c - 1 for c in classes]] = 1.0
    return vector


@dataclass(frozen=True)
class ImageOptions:
    """How the classifier and L2G loaders turn an image (and its saliency) into a training input.

    resize: "warp" scales the image to input_size x input_size (bilinear); "short_crop" (the
    official VOC loader) scales its short side to short_side (bicubic; saliency nearest) and cuts
    a random input_size crop, drawn as the official code draws it (crop_axes "official") or
    inside the image ("image"). jitter: (brightness, contrast, saturation, hue) strengths of the
    colour jitter, applied by the official formula (jitter_formula "official") or the demo's
    ("float", augment.apply_jitter_float). saliency_norm "max" divides each saliency crop by its maximum (official).
    stats: the normalisation (imagenet, or coco as the official COCO loader). decode (DECODE_MODES):
    "gpu" decodes and shapes each batch on the training device (gpu_augment): the same samples
    but for a rare rounding (tests/test_gpu_augment.py).
    """

    resize: str = "warp"
    short_side: int = 512
    crop_axes: str = "official"
    flip: bool = False
    jitter: tuple = (0.3, 0.3, 0.3, 0.1)
    jitter_formula: str = "official"
    saliency_norm: str = "max"
    stats: str = "imagenet"
    decode: str = "cpu"


def collate_raw(samples):
    """A batch of raw samples (decode gpu): labels and indices stacked as torch's default does,
    the file bytes, saliency maps and draws (sizes differ per image) as lists."""
    batch = default_collate([{k: v for k, v in sample.items() if k not in RAW_KEYS} for sample in samples])
    for key in RAW_KEYS:
        if key in samples[0]:
            batch[key] = [sample[key] for sample in samples]
    return batch


class LabelledImages(Dataset):
    """Training images at input_size x input_size with multi-hot labels (and saliency), shaped by
    ImageOptions.

    Every random draw comes from a generator seeded by (seed, epoch, index), so a sample is the
    same whatever the worker, order or resumption. Set `epoch` before each epoch.
    """

    def __init__(self, manifest, split, input_size, *, saliency=False, saliency_dir=None, options=ImageOptions(),
                 seed=0):
        # saliency maps from saliency_dir where given (made by the pipeline), else ROOT/Sal
        self.layout = VOCLayout(manifest["root"], saliency_dir)
        self.ids = split_ids(manifest, split)
        labels = json.loads(Path(manifest["labels"]).read_text())
        self.labels = [multi_hot(labels[i], manifest["num_classes"]) for i in self.ids]
        if saliency and not self.layout.has_saliency():
            raise L2GError(f"dataset {manifest['name']} has no saliency maps ({self.layout.saliency_dir} does not "
                           f"exist); set use_saliency: false, or saliency: {{source: cams}}")
        if saliency:  # every map is there before the first epoch, not found missing hours in
            missing = [i for i in self.ids if not self.layout.saliency_path(i).is_file()]
            if missing:
                raise L2GError(f"{self.layout.saliency_path(missing[0])}: saliency map not found "
                               f"({len(missing)} of {len(self.ids)} training images have none)")
        self.input_size = input_size
        self.saliency = saliency
        self.options = options
        if options.decode not in DECODE_MODES:
            raise L2GError(f"decode must be one of {', '.join(DECODE_MODES)}, got {options.decode!r}")
        self.seed = seed
        self.epoch = 0
        # the DataLoader's collate_fn: None (torch's default) for finished samples, lists for raw ones
        self.collate_fn = collate_raw if options.decode == "gpu" else None

    def __len__(self):
        return len(self.ids)

    def saliency_map(self, image_id):
        """The 0..255 map as stored, so that resizing sees what the official code sees."""
        return np.rint(self.layout.load_saliency(image_id) * 255).astype(np.uint8)

    def draws(self, size, rng):
        """Every random draw of one sample from an image of `size` (width, height), in the one
        order both decode modes use: the crop box (short_crop), the flip (flip on), the jitter."""
        o = self.options
        box = crop_box(short_size(size, o.short_side), self.input_size, rng, o.crop_axes) \
            if o.resize == "short_crop" else None
        flip = bool(o.flip and rng.random() < 0.5)
        return {"box": box, "flip": flip, "jitter": draw_jitter(o.jitter, rng)}

    def __getitem__(self, index):
        image_id = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.options.decode == "gpu":  # the bytes and draws only: device_batch does the rest
            data, size = self.layout.load_encoded_image(image_id)
            sample = {"label": self.labels[index], "index": index, "encoded": torch.from_numpy(data),
                      "draws": self.draws(size, rng)}
            if self.saliency:
                sample["saliency_u8"] = torch.from_numpy(self.saliency_map(image_id))
            return sample
        image = Image.fromarray(self.layout.load_image(image_id))
        sal = Image.fromarray(self.saliency_map(image_id)) if self.saliency else None
        draws = self.draws(image.size, rng)
        image, sal = self.geometry(image, sal, draws)
        jitter = apply_jitter if self.options.jitter_formula == "official" else apply_jitter_float
        image = jitter(image, draws["jitter"])
        sample = {"label": self.labels[index], "index": index, "image": normalise(image, self.options.stats)}
        if sal is not None:
            sal = np.asarray(sal, dtype=np.float32) / 255.0
            if self.options.saliency_norm == "max":
                sal = sal / (sal.max() + 1e-10)
            sample["saliency"] = torch.from_numpy(np.ascontiguousarray(sal))[None]
        return sample

    def device_batch(self, batch, device):
        """The training batch of a collated batch whose tensors are on `device`: itself (decode
        cpu), or with its images and saliency maps decoded and shaped there (decode gpu)."""
        if self.options.decode != "gpu":
            return batch
        batch = dict(batch)
        images, saliency = make_batch(batch.pop("encoded"), batch.pop("saliency_u8", None), batch.pop("draws"),
                                      self.options, self.input_size, device)
        batch["image"] = images
        if saliency is not None:
            batch["saliency"] = saliency
        return batch

    def geometry(self, image, sal, draws):
        """Resize (and crop, and flip) the image and its saliency map alike, as `draws` say."""
        o, size = self.options, self.input_size
        if o.resize == "warp":
            image = image.resize((size, size), Image.BILINEAR)
            sal = sal.resize((size, size), Image.BILINEAR) if sal is not None else None
        else:
            image = resize_short(image, o.short_side, Image.BICUBIC)
            image = image.crop(draws["box"])
            if sal is not None:
                sal = resize_short(sal, o.short_side, Image.NEAREST).crop(draws["box"])
        if draws["flip"]:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            sal = sal.transpose(Image.FLIP_LEFT_RIGHT) if sal is not None else None
        return image, sal


class SegmentationCrops(Dataset):
    """DeepLab training samples as deeplab-pytorch's _BaseDataset._augmentation makes them.

    labels_dir: a folder of label PNGs ID.png (pseudo labels), or None for the ground truth masks.
    Each sample is scaled by a factor drawn from `scales` (deeplab-pytorch: one of 0.5 ... 1.5) or,
    with `scale_range`, uniformly from that range, to int(side * factor) pixels (image bilinear,
    half-pixel centres as cv2.INTER_LINEAR; labels nearest), padded at the bottom and right to at
    least crop_size (image with `pad_rgb`, the mean the model subtracts, so padding is 0 to it;
    labels with 255, ignored), cropped to crop_size x crop_size at a random place and flipped half
    the time; only the crop is normalised. The draws come from a generator seeded by (seed, epoch,
    index), as in LabelledImages.
    """

    def __init__(self, manifest, split, crop_size, *, labels_dir=None, scales=None, scale_range=None,
                 pad_rgb=tuple(255 * MEAN), seed=0):
        if (scales is None) == (scale_range is None):
            raise ValueError("give scales or scale_range, one of them")
        self.layout = VOCLayout(manifest["root"])
        self.ids = split_ids(manifest, split)
        self.labels_dir = Path(labels_dir) if labels_dir is not None else None
        self.crop_size = crop_size
        self.scales = scales
        self.scale_range = scale_range
        self.pad_rgb = torch.tensor(pad_rgb, dtype=torch.float32)[:, None, None]
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

    def draw_scale(self, rng):
        if self.scales is not None:
            return float(self.scales[rng.integers(len(self.scales))])
        return float(rng.uniform(*self.scale_range))

    def __getitem__(self, index):
        image_id = self.ids[index]
        rgb, label = self.layout.load_image(image_id), self.load_label(image_id)
        if label.shape != rgb.shape[:2]:
            raise L2GError(f"{self.label_path(image_id)}: label map is {label.shape[1]}x{label.shape[0]}, "
                           f"its image {rgb.shape[1]}x{rgb.shape[0]}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale = self.draw_scale(rng)
        size = (max(1, int(rgb.shape[0] * scale)), max(1, int(rgb.shape[1] * scale)))
        image = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = torch.from_numpy(np.asarray(Image.fromarray(label).resize(size[::-1], Image.NEAREST), dtype=np.int64))
        c = self.crop_size
        pad_h, pad_w = max(0, c - size[0]), max(0, c - size[1])
        if pad_h or pad_w:
            image = F.pad(image - self.pad_rgb, (0, pad_w, 0, pad_h), value=0.0) + self.pad_rgb
            label = F.pad(label, (0, pad_w, 0, pad_h), value=255)
        top = int(rng.integers(0, label.shape[0] - c + 1))
        left = int(rng.integers(0, label.shape[1] - c + 1))
        image, label = image[:, top:top + c, left:left + c], label[top:top + c, left:left + c]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in IMAGE_STATS["imagenet"])
        image = (image / 255.0 - mean) / std
        return {"image": image.contiguous(), "label": label.contiguous(), "index": index}
