"""The synthetic demo dataset: a small, honest WSSS problem that runs on a CPU.

Each image shows 1 to 3 "creatures" of 1 or 2 classes on a textured, cluttered background.
A creature is an elliptic body with a head at one end:

* the head is the distinctive part: a class-specific shape in a class-specific saturated colour
  with a dark eye. It covers a minority (about a fifth) of the creature's area.
* the body carries a weaker class cue: a muted hue and a stripe direction and period that depend
  on the class, with jitter wide enough that neighbouring hues overlap, under pixel noise.
* a share of the creatures (HEADLESS, 0.3) are turned away: only the body shows, and it is still
  the class (in the masks and the labels), as a cat seen from behind is still a cat. This is what
  makes the body cue worth learning at all: with a head always in sight, a classifier never
  needs the body, and no view of it, local or global, can light it up.
* a head-less body of no class (any hue, blotchy, no stripes) lies in about half of the images
  as a distractor: it looks like an object to the saliency maps, but carries no class cue.

A classifier trained on image-level labels therefore finds the heads first (plain CAMs peak on
the heads and under-segment the bodies of creatures whose head shows), while it has learned the
body cue from the turned-away ones: a crop without the head, normalised on its own (L2G's local
view), lights the body up. docs/l2g_method.md tells how the generator came to this (version 3).

Saliency maps imitate an off-the-shelf detector: blurred, with whole objects missed, parts of
bodies missed and false positives on distractors and clutter.

Every image has its own random stream seeded by (seed, split, index), so the output is the same
bytes for a seed, whatever the number of worker processes.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from l2g_core.data.classes import SYNTHETIC_CLASSES
from l2g_core.data.layout import IGNORE_INDEX, IMAGE_DIR, LABELS_FILE, MASK_DIR, SALIENCY_DIR, SPLIT_DIR
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_gray_png, write_jpeg, write_json, write_label_png, write_text
from l2g_core.parallel import parallel_map

GENERATOR_VERSION = 3
SPLIT_STREAMS = {"train": 1, "val": 2}
HEADLESS = 0.3  # the share of creatures whose head does not show


@dataclass(frozen=True)
class CreatureClass:
    head_shape: str
    head_rgb: tuple  # the strong cue
    body_hue: float  # degrees; the weak cues
    stripe_angle: float  # degrees, in the image
    stripe_period: float  # in pixels at size 128


# Head shapes stay distinct under any rotation (no square/diamond pair).
# Body hues sit 12 degrees apart inside one brownish band and are jittered by about that much,
# so the body colour alone confuses neighbouring classes; the heads differ in shape and colour.
CREATURES = (
    CreatureClass("disk", (235, 200, 30), 20.0, 0.0, 5.0),
    CreatureClass("triangle", (230, 80, 20), 32.0, 30.0, 6.0),
    CreatureClass("square", (40, 200, 60), 44.0, 60.0, 7.0),
    CreatureClass("hammer", (30, 30, 30), 56.0, 90.0, 8.0),
    CreatureClass("ring", (40, 120, 230), 68.0, 120.0, 9.0),
    CreatureClass("cross", (220, 40, 200), 80.0, 150.0, 10.0),
)
assert len(CREATURES) == len(SYNTHETIC_CLASSES)


def _hsv_to_rgb(hue, sat, val):
    """Scalar HSV (hue in degrees, sat/val in 0..1) to an RGB triple in 0..255."""
    h = (hue % 360.0) / 60.0
    c = val * sat
    x = c * (1 - abs(h % 2 - 1))
    sector = int(h) % 6
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    m = val - c
    return np.array([r + m, g + m, b + m]) * 255.0


def _frame(yy, xx, cy, cx, angle):
    """Coordinates (u along the axis, v across it) of every pixel in a rotated frame."""
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _head_mask(u, v, shape, r):
    au, av = np.abs(u), np.abs(v)
    dist = np.hypot(u, v)
    if shape == "disk":
        return dist <= r
    if shape == "square":
        return np.maximum(au, av) <= 0.85 * r
    if shape == "hammer":  # a bar across the body axis
        return (au <= 0.4 * r) & (av <= 1.3 * r)
    if shape == "triangle":  # pointing forward along u
        return (u >= -0.7 * r) & (u <= r) & (av <= (r - u) * 0.75)
    if shape == "ring":
        return (dist <= r) & (dist >= 0.5 * r)
    if shape == "cross":
        return (dist <= 1.05 * r) & ((au <= 0.38 * r) | (av <= 0.38 * r))
    raise ValueError(shape)


class _Canvas:
    """An RGB image, its ground-truth labels and the true foreground of each creature."""

    def __init__(self, size, rng):
        self.size = size
        self.rng = rng
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float64)
        self.rgb = self._background()
        self.label = np.zeros((size, size), dtype=np.uint8)
        self.objects = []  # (class index, mask, body mask) of each creature, in drawing order
        self.distractors = []  # masks of head-less bodies

    def _background(self):
        rng, s = self.rng, self.size
        coarse = rng.uniform(60, 200, size=(4, 4, 3))
        base = ndimage.zoom(coarse, (s / 4, s / 4, 1), order=1, mode="nearest")[:s, :s]
        fine = ndimage.gaussian_filter(rng.normal(0, 25, size=(s, s, 3)), sigma=(1.5, 1.5, 0))
        rgb = base + fine
        for _ in range(rng.integers(6, 14)):  # clutter: rectangles, blobs and bars
            colour = rng.uniform(40, 220, size=3)
            cy, cx = rng.uniform(0, s, size=2)
            angle = rng.uniform(0, np.pi)
            u, v = _frame(self.yy, self.xx, cy, cx, angle)
            half = rng.uniform(0.02, 0.10) * s
            kind = rng.integers(3)
            if kind == 0:
                mask = (np.abs(u) <= half) & (np.abs(v) <= half * rng.uniform(0.3, 1.0))
            elif kind == 1:
                mask = (u / half) ** 2 + (v / (half * rng.uniform(0.4, 1.0))) ** 2 <= 1
            else:
                mask = (np.abs(u) <= half * 3) & (np.abs(v) <= 1.0)
            rgb[mask] = 0.5 * rgb[mask] + 0.5 * colour
        return rgb

    def _ellipse(self, cy, cx, angle, a, b):
        """The mask of an elliptic body (half-axes a along the angle, b across) and its frame."""
        u, v = _frame(self.yy, self.xx, cy, cx, angle)
        return (u / a) ** 2 + (v / b) ** 2 <= 1, (u, v)

    def _body(self, creature, cy, cx, angle, a, b):
        """Paint a body with the class's weak cue; return its mask and frame."""
        rng, s = self.rng, self.size
        mask, (u, v) = self._ellipse(cy, cx, angle, a, b)
        hue = creature.body_hue + rng.normal(0, 10)
        colour = _hsv_to_rgb(hue, rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.75))
        # Stripes run in a class direction of the image (not of the body), so a patch of body
        # can be read on its own, as fur or feathers can.
        stripe_angle = np.deg2rad(creature.stripe_angle + rng.normal(0, 8))
        period = creature.stripe_period * s / 128 * rng.uniform(0.85, 1.15)
        along = (self.xx - cx) * np.cos(stripe_angle) + (self.yy - cy) * np.sin(stripe_angle)
        stripes = np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
        shade = 1.0 + rng.uniform(0.15, 0.25) * stripes
        noise = rng.normal(0, 14, size=(s, s, 3))
        painted = colour[None, None, :] * shade[..., None] + noise
        self.rgb[mask] = painted[mask]
        return mask, (u, v)

    def add_creature(self, class_index, cy, cx, angle, a, b):
        creature = CREATURES[class_index - 1]
        body, (u, v) = self._body(creature, cy, cx, angle, a, b)
        r = b * self.rng.uniform(0.55, 0.7)
        hu, hv = u - 0.85 * a, v
        head = _head_mask(hu, hv, creature.head_shape, r)
        if self.rng.random() < HEADLESS:  # turned away: only the body shows, and it still is the class
            head = np.zeros_like(head)
        colour = np.asarray(creature.head_rgb, dtype=np.float64) * self.rng.uniform(0.85, 1.1)
        self.rgb[head] = colour + self.rng.normal(0, 10, size=(int(head.sum()), 3))
        eye = np.hypot(hu - 0.2 * r, hv - 0.35 * r) <= max(1.0, 0.18 * r)
        self.rgb[eye & head] = (15, 15, 15)
        mask = body | head
        self._occlude(mask)
        self.label[mask] = class_index
        self.objects.append((class_index, mask, body & ~head))

    def add_distractor(self, cy, cx, angle, a, b):
        """A head-less body of no class: any hue, blotchy, no stripes. (Version 2 painted it with a
        class's body texture, which taught the classifier that a striped body is no evidence.)"""
        rng, s = self.rng, self.size
        mask, _ = self._ellipse(cy, cx, angle, a, b)
        colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.75))
        blotches = ndimage.gaussian_filter(rng.normal(0, 1, size=(s, s)), sigma=3)
        shade = 1.0 + 0.2 * blotches / (np.abs(blotches).max() + 1e-6)
        painted = colour[None, None, :] * shade[..., None] + rng.normal(0, 14, size=(s, s, 3))
        self.rgb[mask] = painted[mask]
        self._occlude(mask)
        self.label[mask] = 0
        self.distractors.append(mask)

    def _occlude(self, mask):
        """Whatever is painted later hides the part of earlier creatures under it."""
        self.objects = [(c, m & ~mask, bd & ~mask) for c, m, bd in self.objects]


def _random_pose(rng, size, near=None):
    a = rng.uniform(0.14, 0.30) * size
    b = a * rng.uniform(0.45, 0.75)
    angle = rng.uniform(0, 2 * np.pi)
    if near is not None:  # touch or overlap an earlier creature
        cy0, cx0, a0 = near
        direction = rng.uniform(0, 2 * np.pi)
        dist = (a0 + a) * rng.uniform(0.5, 0.9)
        cy, cx = cy0 + dist * np.sin(direction), cx0 + dist * np.cos(direction)
    else:
        cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    cy, cx = np.clip([cy, cx], 0.1 * size, 0.9 * size)
    return cy, cx, angle, a, b


def _ignore_borders(label):
    """VOC-style void band: 255 wherever the 3x3 neighbourhood holds another label."""
    grown = ndimage.maximum_filter(label, size=3)
    shrunk = ndimage.minimum_filter(label, size=3)
    out = label.copy()
    out[grown != shrunk] = IGNORE_INDEX
    return out


def _saliency(canvas):
    """A detector-like saliency map: blurred, with misses and false positives."""
    rng, s = canvas.rng, canvas.size
    sal = np.zeros((s, s))
    for _, mask, body in canvas.objects:
        if rng.random() < 0.15:  # the whole object missed
            continue
        region = mask.copy()
        if rng.random() < 0.5:  # part of the body missed: cut along a random line
            ys, xs = np.nonzero(body)
            if len(ys):
                k = rng.integers(len(ys))
                theta = rng.uniform(0, 2 * np.pi)
                side = (canvas.yy - ys[k]) * np.sin(theta) + (canvas.xx - xs[k]) * np.cos(theta) > 0
                region &= ~(body & side)
        sal[region] = np.maximum(sal[region], rng.uniform(0.6, 1.0))
    for mask in canvas.distractors:  # false positives on head-less bodies
        if rng.random() < 0.4:
            sal[mask] = np.maximum(sal[mask], rng.uniform(0.4, 0.9))
    for _ in range(rng.integers(0, 3)):  # false positives on clutter
        cy, cx = rng.uniform(0, s, size=2)
        half = rng.uniform(0.05, 0.15) * s
        blob = (canvas.yy - cy) ** 2 + ((canvas.xx - cx) * rng.uniform(0.5, 1.5)) ** 2 <= half**2
        sal[blob] = np.maximum(sal[blob], rng.uniform(0.3, 0.8))
    sal = ndimage.gaussian_filter(sal, sigma=0.03 * s)
    sal += ndimage.gaussian_filter(rng.normal(0, 0.08, size=(s, s)), sigma=2)
    return np.clip(sal * 255.0, 0, 255).astype(np.uint8)


def render_image(seed, split, index, size):
    """One sample: (rgb uint8 HxWx3, label uint8 HxW with 255 borders, saliency uint8, classes)."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    canvas = _Canvas(size, rng)
    num_classes = len(CREATURES)
    chosen = rng.choice(np.arange(1, num_classes + 1), size=1 + int(rng.random() < 0.4), replace=False)
    num_objects = max(len(chosen), int(rng.integers(1, 4)))
    classes = list(chosen) + list(rng.choice(chosen, size=num_objects - len(chosen)))
    num_distractors = int(rng.random() < 0.5)
    behind = [d for d in range(num_distractors) if rng.random() < 0.75]
    for _ in behind:
        canvas.add_distractor(*_random_pose(rng, size))
    poses = []
    for class_index in classes:
        near = poses[rng.integers(len(poses))] if poses and rng.random() < 0.35 else None
        pose = _random_pose(rng, size, near)
        canvas.add_creature(int(class_index), *pose)
        poses.append((pose[0], pose[1], pose[3]))
    for _ in range(num_distractors - len(behind)):  # some distractors in front
        canvas.add_distractor(*_random_pose(rng, size))
    gain, offset = rng.uniform(0.8, 1.15), rng.uniform(-20, 20)
    rgb = np.clip(canvas.rgb * gain + offset, 0, 255).astype(np.uint8)
    label = _ignore_borders(canvas.label)
    # Labels from the final mask, as VOC's are: a sliver lost in the void band is no label.
    present = sorted(int(c) for c in np.unique(label) if c not in (0, IGNORE_INDEX))
    return rgb, label, _saliency(canvas), present


def _write_sample(job):
    out, seed, split, index, size = job
    image_id = f"{split}_{index:05d}"
    rgb, label, saliency, present = render_image(seed, split, index, size)
    write_jpeg(out / IMAGE_DIR / f"{image_id}.jpg", rgb)
    write_label_png(out / MASK_DIR / f"{image_id}.png", label)
    write_gray_png(out / SALIENCY_DIR / f"{image_id}.png", saliency)
    return image_id, present


def make_synthetic(out, num_train, num_val, size, seed, workers=None):
    """Write the synthetic dataset in the VOC layout under `out`; `synthetic.json` comes last."""
    if num_train < 1 or num_val < 1:
        raise L2GError("make-synthetic: --train and --val must be at least 1")
    if size < 32:
        raise L2GError("make-synthetic: --size must be at least 32 pixels")
    out = Path(out)
    jobs = [(out, seed, split, i, size) for split, n in (("train", num_train), ("val", num_val)) for i in range(n)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    labels = {}
    for image_id, present in tqdm(parallel_map(_write_sample, jobs, workers, chunksize=8), total=len(jobs),
                                  desc="make-synthetic", unit="img", mininterval=1.0):
        labels[image_id] = present
    for split in ("train", "val"):
        ids = [image_id for image_id in labels if image_id.startswith(split + "_")]
        write_text(out / SPLIT_DIR / f"{split}.txt", "\n".join(ids) + "\n")
    write_json(out / LABELS_FILE, labels)
    write_json(out / "synthetic.json", {
        "generator_version": GENERATOR_VERSION, "train": num_train, "val": num_val, "size": size,
        "seed": seed, "class_names": list(SYNTHETIC_CLASSES),
    })
    return labels

