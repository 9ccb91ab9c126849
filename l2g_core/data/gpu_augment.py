"""The classifier and L2G loaders' image operations as batched tensor ops, for `decode: gpu`.

With decode gpu the loader workers only read each image's file bytes (and its saliency map) and
make the sample's random draws (LabelledImages.draws: the generator and order of the CPU path);
the batch is decoded by torchvision.io.decode_jpeg on the training device and shaped here. Each
function follows the arithmetic of the PIL operation that the CPU path (augment.py,
LabelledImages.geometry) runs, so that on the same decoded pixels both make the same sample:

- resize: PIL resamples in two passes (horizontal then vertical, or the other way round where
  the height shrinks much more), each rounded to uint8, with integer fixed-point weights of its
  antialiasing filters (bilinear; bicubic with a = -0.5): the same weights and int32 sums here
  (F.interpolate's float weights miss PIL by a level on about 2% of downscaled values); NEAREST
  reads the source pixel at positions accumulated in double, as PIL steps them.
- colour jitter, "official": PIL's Image.blend (float32 arithmetic, truncated and clipped to
  uint8) against black (Brightness), the rounded mean of the L image (Contrast) or the L image
  (Color), L being PIL's fixed-point 0.299 R + 0.587 G + 0.114 B; the hue through PIL's own
  RGB <-> HSV conversion (libImaging/Convert.c, whose float and double steps are kept apart).
  "float": augment.apply_jitter_float's arithmetic in float32, truncated once; only its image
  mean is summed in another order than NumPy's (a level now and then).

What remains different on a GPU is the JPEG decoder (nvjpeg against libjpeg: a level here and
there). Images are float32 tensors N x C x H x W holding whole numbers 0..255 until `normalise`.
The draws stay on the host; what the device needs of them goes in small non-blocking copies.
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from l2g_core.data.augment import IMAGE_STATS, JITTER_ORDER, short_size
from l2g_core.runtime import to_device


def divide(x, divisor):
    """x / divisor rounded as IEEE division on every device: CUDA multiplies by the reciprocal of
    a Python scalar divisor, which is off by one bit now and then; where a value is truncated to
    an integer next (PIL's HSV), that bit can change the integer."""
    return x / torch.full_like(x, divisor)


def c_round(x):
    """C's round() of values >= 0: halves away from zero, exactly (floor(x + 0.5) is not exact
    just below a half)."""
    low = torch.floor(x)
    return low + (x - low >= 0.5).to(x.dtype)


FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
PRECISION_BITS = 22  # PIL's fixed-point weights of 8-bit images: 32 - 8 - 2


def pil_filter(x, mode):
    """PIL's resampling filters (Resample.c bilinear_filter, bicubic_filter with a = -0.5)."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=256)
def pil_taps(n_in, n_out, mode):
    """(index, weight), n_out x K each: the input pixels and integer fixed-point weights of each
    output pixel of PIL's resampling pass from n_in to n_out pixels (Resample.c precompute_coeffs
    and normalize_coeffs_8bpc, in the same double arithmetic: PIL's weights to the bit). Unused
    taps point at a pixel with weight 0. Cached: a dataset has few image sizes."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = FILTER_SUPPORT[mode] * filterscale
    width = int(math.ceil(support)) * 2 + 1
    center = (np.arange(n_out) + 0.5) * scale
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int): toward zero
    count = np.minimum((center + support + 0.5).astype(np.int64), n_in) - first
    taps = np.arange(width)[None, :]
    used = taps < count[:, None]
    weights = np.where(used, pil_filter((taps + first[:, None] - center[:, None] + 0.5) * (1.0 / filterscale),
                                        mode), 0.0)
    total = np.cumsum(weights, axis=1)[:, -1:]  # summed one tap after the other, as the C loop does
    weights = np.where(total != 0, weights / np.where(total != 0, total, 1.0), weights)
    fixed = np.trunc(np.where(weights < 0, -0.5, 0.5) + weights * (1 << PRECISION_BITS))
    return np.minimum(first[:, None] + taps, n_in - 1), np.where(used, fixed, 0.0).astype(np.int32)


def resample_last_axis(x, n_out, mode):
    """One PIL resampling pass along the last axis of int32 x: each output pixel the weighted sum
    of its K taps (a gather; K is small, where a dense matrix would cost n_in / K times the work)
    plus one half, shifted down to 8 bits and clipped, in int32 as the C code computes it."""
    index, weight = (to_device(torch.from_numpy(a), x.device) for a in pil_taps(x.shape[-1], n_out, mode))
    sums = (x[..., index] * weight).sum(dim=-1, dtype=torch.int32)
    return ((sums + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255)


def resize(images, size, mode):
    """N x C x H x W -> N x C x size[0] x size[1] as PIL's Image.resize with BILINEAR ("bilinear")
    or BICUBIC ("bicubic"), to the bit: two passes with PIL's fixed-point weights, each rounded to
    uint8, in PIL's order; PIL skips a pass whose side does not change."""
    height, width = size
    x = images.to(torch.int32)
    # Pillow 13 (pinned in pyproject.toml) runs the vertical pass first where the height loses
    # more than twice as many pixels as the width (Resample.c ImagingResampleInner); the order
    # changes the roundings (earlier Pillows always ran the horizontal pass first)
    shrink_height, shrink_width = x.shape[-2] - height, x.shape[-1] - width
    vertical_first = shrink_height > 0 and shrink_height > 2 * shrink_width
    for axis in (-2, -1) if vertical_first else (-1, -2):
        if axis == -1 and x.shape[-1] != width:
            x = resample_last_axis(x, width, mode)
        if axis == -2 and x.shape[-2] != height:
            x = resample_last_axis(x.transpose(-1, -2), height, mode).transpose(-1, -2)
    return x.to(images.dtype)


def nearest_indices(n_in, n_out):
    """The source rows (or columns) PIL's NEAREST resize reads for n_out outputs: positions
    (k + 0.5) * n_in / n_out accumulated in double, one step at a time, as ImagingScaleAffine
    steps them, truncated (a closed formula misses PIL on about 0.1% of upscaled pixels)."""
    step = n_in / n_out
    positions = np.cumsum(np.r_[step * 0.5, np.full(n_out - 1, step)])
    return torch.from_numpy(np.minimum(positions.astype(np.int64), n_in - 1))


def resize_nearest(images, size):
    """N x C x H x W -> N x C x size[0] x size[1] as PIL's Image.resize with NEAREST."""
    rows = to_device(nearest_indices(images.shape[-2], size[0]), images.device)
    columns = to_device(nearest_indices(images.shape[-1], size[1]), images.device)
    return images.index_select(-2, rows).index_select(-1, columns)


def crop(images, box):
    """PIL's Image.crop to box (left, top, right, bottom), left and top >= 0: black (0) where the
    box runs past the image, as the official crop box often does (augment.crop_box)."""
    left, top, right, bottom = box
    height, width = images.shape[-2:]
    images = F.pad(images, (0, max(0, right - width), 0, max(0, bottom - height)))
    return images[..., top:bottom, left:right]


def geometry(image, draw, options, size, saliency=False):
    """One image (1 x C x H x W) resized, cropped and flipped as LabelledImages.geometry does it,
    with the sample's draws (LabelledImages.draws); saliency: a saliency map, which the short
    side resize samples with NEAREST where the image takes BICUBIC."""
    if options.resize == "warp":
        image = resize(image, (size, size), "bilinear")
    else:
        width, height = short_size((image.shape[-1], image.shape[-2]), options.short_side)
        image = resize_nearest(image, (height, width)) if saliency else resize(image, (height, width), "bicubic")
        image = crop(image, draw["box"])
    return image.flip(-1) if draw["flip"] else image


def luma(images):
    """PIL's L of N x 3 x H x W RGB, (19595 R + 38470 G + 7471 B + 2**15) >> 16, as N x 1 x H x W."""
    rgb = images.to(torch.int32)
    grey = (rgb[:, 0:1] * 19595 + rgb[:, 1:2] * 38470 + rgb[:, 2:3] * 7471 + 0x8000) >> 16
    return grey.to(images.dtype)


def blend(degenerate, images, factors):
    """PIL's Image.blend(degenerate, image, factor) per sample (factors: N values): degenerate +
    factor * (image - degenerate) in float32, truncated to uint8 (clipped beyond 0..255)."""
    factors = factors.to(torch.float32).view(-1, 1, 1, 1)
    return torch.trunc(degenerate + factors * (images - degenerate)).clamp_(0, 255)


def brightness(images, factors):
    """ImageEnhance.Brightness: a blend with black."""
    return blend(torch.zeros_like(images), images, factors)


def contrast(images, factors):
    """ImageEnhance.Contrast: a blend with the mean of the L image, int(mean + 0.5), computed as
    an integer: floor((2 sum + n) / 2n) is that for every sum PIL's double quotient can meet."""
    grey = luma(images).to(torch.int64)
    count = grey.shape[-2] * grey.shape[-1]
    mean = torch.div(2 * grey.sum(dim=(1, 2, 3), keepdim=True) + count, 2 * count, rounding_mode="floor")
    return blend(mean.to(images.dtype), images, factors)


def saturation(images, factors):
    """ImageEnhance.Color: a blend with the L image (the RGB image converted to L and back)."""
    return blend(luma(images), images, factors)


def rgb_to_hsv(images):
    """PIL's convert("HSV") of N x 3 x H x W RGB (Convert.c rgb2hsv_row): (h, s, v), each N x H x W.
    float32 where the C code computes in float, float64 where it meets a double constant."""
    r, g, b = images.unbind(1)
    high = torch.maximum(r, torch.maximum(g, b))
    low = torch.minimum(r, torch.minimum(g, b))
    spread = high - low
    s = spread / high
    rc, gc, bc = ((high - c) / spread for c in (r, g, b))
    hue = torch.where(r == high, bc - gc, torch.where(g == high, (2.0 + rc.double() - bc.double()).float(),
                                                      (4.0 + gc.double() - rc.double()).float()))
    hue = torch.fmod(divide(hue.double(), 6.0) + 1.0, 1.0).float()
    grey = spread == 0  # no hue, no saturation (the divisions above gave nan there)
    h = torch.where(grey, 0.0, torch.trunc(hue.double() * 255.0).float())
    s = torch.where(grey, 0.0, torch.trunc(s.double() * 255.0).float())
    return h, s, high


def hsv_to_rgb(h, s, v):
    """PIL's convert("RGB") of HSV bytes (Convert.c hsv2rgb): N x 3 x H x W from three N x H x W."""
    x = divide(h.double() * 6.0, 255.0)
    sector = torch.floor(x)
    f = (x - sector).float()
    fs = divide(s.double(), 255.0).float()
    v64 = v.double()
    p = c_round(v64 * (1.0 - fs.double())).float()
    q = c_round(v64 * (1.0 - (fs * f).double())).float()  # fs * f: a float product in the C code
    t = c_round(v64 * (1.0 - fs.double() * (1.0 - f.double()))).float()
    sector = torch.remainder(sector, 6)

    def pick(*values):  # the channel's value in each of the six sectors
        out = values[5]
        for k in range(4, -1, -1):
            out = torch.where(sector == k, values[k], out)
        return torch.where(s == 0, v, out)
    return torch.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], dim=1)


def hue(images, shifts):
    """augment.shift_hue per sample (shifts: N turns): the HSV hue byte plus int(shift * 255),
    wrapping around."""
    h, s, v = rgb_to_hsv(images)
    turn = torch.trunc(shifts.to(torch.float64) * 255).view(-1, 1, 1)
    return hsv_to_rgb(torch.remainder(h.double() + turn, 256).float(), s, v)


OPERATIONS = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}


def jitter_tables(draws, device):
    """(codes, factors) of per-sample draw_jitter draws: N x K tables in the drawn order, codes
    indexing JITTER_ORDER (-1: none), on the host and, as one copy, on `device`."""
    width = max((len(ops) for ops in draws), default=0)
    table = np.zeros((len(draws), width, 2))
    table[:, :, 0] = -1
    for row, ops in enumerate(draws):
        for position, (name, factor) in enumerate(ops):
            table[row, position] = JITTER_ORDER.index(name), factor
    host = torch.from_numpy(table)
    return host, to_device(host, device)


def jitter_official(images, draws):
    """augment.apply_jitter on a batch: each sample's operations in its own drawn order, each
    rounded to uint8. At each position of the order, each operation runs once on the samples
    that apply it there (their rows, found on the host, copied to the device in one go): the
    work of one operation per sample and position, no host-device synchronisation."""
    host, table = jitter_tables(draws, images.device)
    groups = [(position, code, (host[:, position, 0] == code).nonzero().flatten())
              for position in range(host.shape[1]) for code in range(len(JITTER_ORDER))]
    groups = [(position, code, rows) for position, code, rows in groups if len(rows)]
    if not groups:
        return images
    all_rows = to_device(torch.cat([rows for _, _, rows in groups]), images.device)
    images, start = images.clone(), 0
    for position, code, rows in groups:
        chosen, start = all_rows[start:start + len(rows)], start + len(rows)
        factors = table[:, position, 1].index_select(0, chosen)
        images.index_copy_(0, chosen, OPERATIONS[JITTER_ORDER[code]](images.index_select(0, chosen), factors))
    return images


def jitter_float(images, draws):
    """augment.apply_jitter_float on a batch: brightness, contrast around the image's mean,
    saturation around the channel mean, in float32, truncated to uint8 once; then the hue.
    Every sample has the same operations (the strengths are the dataset's)."""
    names = [name for name in JITTER_ORDER if draws and name in dict(draws[0])]
    table = to_device(torch.tensor([[dict(ops)[name] for name in names] for ops in draws], dtype=torch.float64),
                      images.device)
    factors = {name: table[:, k] for k, name in enumerate(names)}
    x = images
    if "brightness" in factors:
        x = x * factors["brightness"].float().view(-1, 1, 1, 1)
    if "contrast" in factors:
        mean = x.double().mean(dim=(1, 2, 3), keepdim=True).float()
        x = (x - mean) * factors["contrast"].float().view(-1, 1, 1, 1) + mean
    if "saturation" in factors:
        grey = divide(x[:, 0:1] + x[:, 1:2] + x[:, 2:3], 3.0)
        x = (x - grey) * factors["saturation"].float().view(-1, 1, 1, 1) + grey
    x = torch.trunc(x.clamp(0, 255))
    return hue(x, factors["hue"]) if "hue" in factors else x


def normalise(images, stats="imagenet"):
    """augment.normalise on a batch: / 255, minus the mean, over the std (IMAGE_STATS[stats])."""
    mean, std = (to_device(torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1), images.device)
                 for v in IMAGE_STATS[stats])
    return (divide(images, 255.0) - mean) / std


def decode(encoded, device):
    """Each sample's image as a 1 x 3 x H x W float32 tensor on `device`. JPEG file bytes (1-D
    uint8) are decoded together by torchvision.io.decode_jpeg on the device; pixels (H x W x 3
    uint8: an image decode_jpeg would not read as PIL does, decoded by the worker) are copied."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if data.dim() == 1]
    if jpegs:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, data in enumerate(encoded):
        if data.dim() == 3:
            images[i] = to_device(data, device).permute(2, 0, 1)
    return [image[None].float() for image in images]


def make_batch(encoded, saliency, draws, options, size, device):
    """(images N x 3 x size x size normalised, saliency N x 1 x size x size or None) of a batch of
    LabelledImages samples with decode gpu: what LabelledImages.__getitem__ makes on the CPU.

    encoded: the workers' file bytes (or pixels); saliency: their uint8 H x W maps, or None;
    draws: their LabelledImages.draws; options: the ImageOptions; size: the input size."""
    images = torch.cat([geometry(image, draw, options, size) for image, draw in zip(decode(encoded, device), draws)])
    jitter = jitter_official if options.jitter_formula == "official" else jitter_float
    images = normalise(jitter(images, [draw["jitter"] for draw in draws]), options.stats)
    if saliency is None:
        return images, None
    maps = torch.cat([geometry(to_device(m, device)[None, None].float(), draw, options, size, saliency=True)
                      for m, draw in zip(saliency, draws)])
    maps = divide(maps, 255.0)
    if options.saliency_norm == "max":
        maps = maps / (maps.amax(dim=(1, 2, 3), keepdim=True) + 1e-10)
    return images, maps
