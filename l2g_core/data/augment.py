"""Image operations of the training loaders, each a pure function of its random draws.

The official L2G VOC loader (PengtaoJiang/L2G utils/LoadData.py, VOCDataset_l2g_sal_crop) does:
short side to 512 (image bicubic, saliency nearest), a random 448 x 448 crop, colour jitter
(brightness, contrast, saturation 0.3, hue 0.1, in random order), no flip, the saliency divided
by its maximum. Its crop box comes from imutils.get_random_crop_box, which reads PIL's
(width, height) as (height, width): the left edge is drawn over the image's height and the top
edge over its width, and the part of the box beyond the image is black (PIL fills it with 0).
`crop_box(..., axes="official")` reproduces that; axes="image" draws the box inside the image.

Each random draw is made by the caller (a numpy Generator seeded per sample) and passed in, so a
test can give the official code and ours the same draws.
"""

import numpy as np
from PIL import Image, ImageEnhance

IMAGE_STATS = {
    # (mean, std) of the normalisation; the official L2G loaders use the COCO values on COCO.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "coco": ((0.471, 0.448, 0.408), (0.234, 0.239, 0.242)),
}
JITTER_ORDER = ("brightness", "contrast", "saturation", "hue")
# How the jitter factors are applied: "official" as torchvision's ColorJitter on PIL images (the
# official L2G loaders: luma grey, a rounding after each operation, the operations shuffled);
# "float" in float with one rounding at the end, in a fixed order, contrast around the image's
# mean and saturation around the channel-mean grey (the demo's stage-1 formula before 2026-12-01).
JITTER_FORMULAS = ("official", "float")


def short_size(size, short_side):
    """(width, height) of an image of `size` (width, height) scaled so that its shorter side is
    `short_side` (official imutils.ResizeShort)."""
    width, height = size
    if width < height:
        return short_side, int(round(height * short_side / width))
    return int(round(width * short_side / height)), short_side


def resize_short(image, short_side, resample):
    """Scale a PIL image so that its shorter side is `short_side` (official imutils.ResizeShort)."""
    return image.resize(short_size(image.size, short_side), resample=resample)


def crop_box(image_size, crop, rng, axes="official"):
    """(left, top, right, bottom) of a random crop x crop box for a PIL image of `image_size`
    (width, height). axes "official": the left edge ranges over the height and the top edge over
    the width, as get_random_crop_box does; "image": both inside the image."""
    width, height = image_size
    horizontal, vertical = (height, width) if axes == "official" else (width, height)
    left = int(rng.integers(0, max(horizontal - crop, 0) + 1))
    top = int(rng.integers(0, max(vertical - crop, 0) + 1))
    return left, top, left + crop, top + crop


def draw_jitter(strengths, rng):
    """The factors and order of one colour jitter: [(name, factor), ...] in the order applied.

    strengths: (brightness, contrast, saturation, hue) as torchvision's ColorJitter takes them;
    a factor is drawn in [max(0, 1 - s), 1 + s] (hue: a shift in [-h, h]) for each s > 0, then the
    operations are shuffled, as the official transforms.ColorJitter.get_params does."""
    ops = []
    for name, strength in zip(JITTER_ORDER, strengths):
        if strength > 0:
            low, high = (-strength, strength) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)
            ops.append((name, float(rng.uniform(low, high))))
    return [ops[i] for i in rng.permutation(len(ops))]


def shift_hue(image, shift):
    """Rotate the hue of an RGB PIL image by `shift` of a turn (official functional.adjust_hue:
    the HSV hue byte plus int(shift * 255), wrapping around)."""
    hue, saturation, value = image.convert("HSV").split()
    turned = (np.asarray(hue, dtype=np.int64) + int(shift * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(turned.astype(np.uint8), "L"), saturation, value)).convert("RGB")


def apply_jitter(image, ops):
    """Apply draw_jitter's operations to an RGB PIL image with PIL's enhancers (as official)."""
    enhancers = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                 "saturation": ImageEnhance.Color}
    for name, factor in ops:
        image = shift_hue(image, factor) if name == "hue" else enhancers[name](image).enhance(factor)
    return image


def apply_jitter_float(image, ops):
    """The "float" formula of draw_jitter's factors on an RGB PIL image: brightness, then contrast
    around the image's mean, then saturation around each pixel's channel mean, whatever the drawn
    order, in float, truncated to uint8 once at the end; a hue shift, if drawn, after that."""
    factors = dict(ops)
    x = np.asarray(image, dtype=np.float32)
    if "brightness" in factors:
        x = x * factors["brightness"]
    if "contrast" in factors:
        mean = x.mean()
        x = (x - mean) * factors["contrast"] + mean
    if "saturation" in factors:
        grey = x.mean(axis=2, keepdims=True)
        x = (x - grey) * factors["saturation"] + grey
    image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    return shift_hue(image, factors["hue"]) if "hue" in factors else image


def normalise(rgb, stats="imagenet"):
    """uint8 (or float 0..255) H x W x 3 RGB -> float32 3 x H x W, minus mean, over std."""
    mean, std = (np.asarray(v, dtype=np.float32) for v in IMAGE_STATS[stats])
    return ((np.asarray(rgb, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy()
