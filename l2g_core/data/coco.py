"""MS COCO 2014 instances -> the VOC layout.

The map of every file the stages exchange: docs/data_contracts.md.

    COCO_ROOT/annotations/instances_{split}2014.json    official instance annotations
    COCO_ROOT/{split}2014/COCO_{split}2014_*.jpg        official images

become, under OUT:

    JPEGImages/ID.jpg                      symlink to (or copy of) the original; ID = file stem
    SegmentationClassAug/ID.png            class index per pixel: 0 background, 1..80 the COCO
                                           categories in ascending category-id order
                                           (COCO_CLASSES), 255 crowd regions (ignore)
    ImageSets/Segmentation/{split}.txt     ids of the images with a non-crowd instance
    cls_labels.json                        {id: [sorted class indices]}

Masks are painted so that small objects survive: crowd regions first (255), then the non-crowd
instances from the largest to the smallest, so where instances overlap the smaller one wins and a
crowd region stays ignore only where no non-crowd instance covers it.

The pure part (annotations -> mask, annotations -> labels) needs no files; `convert_split` adds
the file work: it loads one annotation file, forks a pool of workers that share it, writes every
file atomically and skips masks that already exist, so an interrupted run can simply be rerun.
"""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from l2g_core.data.classes import COCO_CLASSES
from l2g_core.data.layout import IGNORE_INDEX, IMAGE_DIR, LABELS_FILE, MASK_DIR, SPLIT_DIR
from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path, write_json, write_label_png, write_text
from l2g_core.parallel import parallel_map

SPLITS = ("train", "val")
LINK_MODES = ("symlink", "copy")


def annotation_path(coco_root, split):
    return Path(coco_root) / "annotations" / f"instances_{split}2014.json"


def image_dir(coco_root, split):
    return Path(coco_root) / f"{split}2014"


# ---------------------------------------------------------------------------------------------
# Pure functions: annotations in, masks and labels out.


def category_index(categories):
    """{COCO category id: mask class index}: ascending category id -> 1..80 (COCO_CLASSES order).

    Raises ValueError unless the categories are exactly the 80 of COCO_CLASSES.
    """
    ordered = sorted(categories, key=lambda c: c["id"])
    names = tuple(c["name"] for c in ordered)
    if names != COCO_CLASSES:
        extra = sorted(set(names) - set(COCO_CLASSES))
        missing = [n for n in COCO_CLASSES if n not in names]
        detail = f"unknown {extra[:3]}" if extra else f"missing {missing[:3]}" if missing else "order differs"
        raise ValueError(f"categories are not the 80 COCO 2014 categories ({len(names)} given, {detail})")
    return {c["id"]: position + 1 for position, c in enumerate(ordered)}


def segmentation_rle(segmentation, height, width):
    """One compressed RLE for a COCO segmentation: polygons, uncompressed or compressed RLE.

    Polygons with fewer than 3 points are dropped (pycocotools would read a 4-number polygon as
    a box); an instance left without polygons has an empty mask.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [height, width], "counts": counts}
    raise ValueError("segmentation is neither polygons nor RLE")


def image_instances(annotations, height, width, categories):
    """(class index, is crowd, RLE, pixel area) for each annotation of one image.

    `categories` is {category id: class index} (see category_index).
    """
    instances = []
    for ann in annotations:
        try:
            rle = segmentation_rle(ann["segmentation"], height, width)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"annotation {ann.get('id')}: {error}") from None
        area = int(mask_utils.area(rle))
        instances.append((categories[ann["category_id"]], bool(ann.get("iscrowd", 0)), rle, area))
    return instances


def instances_labels(instances):
    """Sorted class indices of the non-crowd instances with at least one pixel."""
    return sorted({cls for cls, crowd, _, area in instances if not crowd and area > 0})


def _decode(rle):
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def instances_mask(instances, height, width):
    """H x W uint8 class-index mask: crowd 255 first, then non-crowd from largest to smallest."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, crowd, rle, area in instances:
        if crowd and area > 0:
            mask[_decode(rle)] = IGNORE_INDEX
    # Largest first, so the smaller instance is drawn last and wins where they overlap (a stable
    # sort keeps annotation order between instances of the same area).
    things = sorted((i for i in instances if not i[1] and i[3] > 0), key=lambda i: -i[3])
    for cls, _, rle, _ in things:
        mask[_decode(rle)] = cls
    return mask


def annotations_to_mask(annotations, height, width, categories):
    """Class-index mask of one image from its COCO annotations (a pure function).

    0 = background, categories[category_id] for each instance (1..80), 255 = crowd region not
    covered by any non-crowd instance. Where instances overlap the smaller instance wins (it is
    drawn last), so small objects are not erased by large ones.
    """
    return instances_mask(image_instances(annotations, height, width, categories), height, width)


def annotations_to_labels(annotations, height, width, categories):
    """Image-level labels: sorted class indices of non-crowd instances with a non-empty mask."""
    return instances_labels(image_instances(annotations, height, width, categories))


# ---------------------------------------------------------------------------------------------
# File work.


def load_annotations(path):
    """The parsed instances file, checked to have images, annotations and categories."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: annotation file not found")
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except ValueError as error:
        raise L2GError(f"{path}: not valid JSON ({error})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise L2GError(f"{path}: not a COCO instances file (no {key!r} list)")
    return data


class SplitJob:
    """What the workers of one split share (set before the fork, read by _convert_one)."""

    def __init__(self, coco_root, out, split, link, data, source):
        try:
            self.categories = category_index(data["categories"])
        except (ValueError, KeyError, TypeError) as error:
            raise L2GError(f"{source}: {error}") from None
        self.source = source
        self.split = split
        self.out = Path(out)
        self.link = link
        self.images = {}      # image id -> (file path, height, width, [annotations])
        by_coco_id = {}
        folder = image_dir(coco_root, split).resolve()
        for image in data["images"]:
            try:
                image_id = Path(image["file_name"]).stem
                record = [folder / image["file_name"], int(image["height"]), int(image["width"]), []]
            except (KeyError, TypeError, ValueError):
                raise L2GError(f"{source}: image entry {image.get('id')} lacks file_name, height or width") from None
            by_coco_id[image["id"]] = (image_id, record)
        for ann in data["annotations"]:
            if ann.get("image_id") not in by_coco_id:
                raise L2GError(f"{source}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
            if ann.get("category_id") not in self.categories:
                raise L2GError(f"{source}: annotation {ann.get('id')} has unknown category {ann.get('category_id')}")
            by_coco_id[ann["image_id"]][1][3].append(ann)
        self.total = len(by_coco_id)
        # Only images with a non-crowd instance are converted; the others are left out.
        for image_id, record in by_coco_id.values():
            if any(not a.get("iscrowd", 0) for a in record[3]):
                self.images[image_id] = tuple(record)


_JOB = None  # the SplitJob of the running split; forked workers inherit it


def _place_image(source, target, link):
    """Symlink (or copy) the original image to `target`, atomically; keep a correct one."""
    if link == "symlink":
        if target.is_symlink() and os.readlink(target) == str(source):
            return
        with atomic_path(target) as tmp:
            tmp.unlink()
            os.symlink(source, tmp)
    else:
        if target.is_file() and not target.is_symlink():
            return
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def _convert_one(image_id):
    """Write one image's link and mask (unless the mask exists); return (id, labels, written?).

    An image whose non-crowd instances have no pixel gets neither: it is left out.
    """
    job = _JOB
    source, height, width, annotations = job.images[image_id]
    try:
        instances = image_instances(annotations, height, width, job.categories)
    except ValueError as error:
        raise L2GError(f"{job.source}: image {image_id}, {error}") from None
    labels = instances_labels(instances)
    if not labels:  # no non-crowd instance with a pixel: left out like an image without one
        return image_id, labels, False
    _place_image(source, job.out / IMAGE_DIR / f"{image_id}.jpg", job.link)
    mask_path = job.out / MASK_DIR / f"{image_id}.png"
    written = False
    if not mask_path.is_file():
        try:
            with Image.open(source) as image:
                size = image.size
        except OSError as error:
            raise L2GError(f"{source}: cannot read image ({error})") from None
        if size != (width, height):
            raise L2GError(f"{source}: image is {size[0]}x{size[1]} but {job.source.name} says {width}x{height}")
        write_label_png(mask_path, instances_mask(instances, height, width))
        written = True
    return image_id, labels, written


def load_split(coco_root, out, split, link="symlink"):
    """Read and check one split (annotation file, categories, every image file): a SplitJob."""
    source = annotation_path(coco_root, split)
    job = SplitJob(coco_root, out, split, link, load_annotations(source), source)
    for path, _, _, _ in job.images.values():
        if not path.is_file():
            raise L2GError(f"{path}: image referenced by {source.name} not found")
    return job


def convert_split(job, workers=1):
    """Convert one checked split; return {id: labels} of the images it lists.

    Listed are the images with a non-crowd instance of at least one pixel; the others are left
    out (their count is printed). Masks already present in OUT are not painted again.
    """
    global _JOB
    ids = sorted(job.images)
    labels, written, kept = {}, 0, 0
    _JOB = job  # set before the fork: the workers share the parsed annotations
    try:
        workers = max(1, min(workers, len(ids)))
        for image_id, present, wrote in tqdm(
                parallel_map(_convert_one, ids, workers, ordered=False, chunksize=16), total=len(ids),
                desc=f"prepare-coco {job.split}", unit="img", mininterval=1.0):
            labels[image_id] = present
            written += wrote
            kept += bool(present) and not wrote
    finally:
        _JOB = None
    listed = {i: labels[i] for i in ids if labels[i]}
    print(f"{job.split}: {len(listed)} images listed, {job.total - len(listed)} left out without a "
          f"non-crowd instance, {written} masks written, {kept} already there")
    if not listed:
        raise L2GError(f"{job.source}: no image has a non-crowd instance")
    return listed


def prepare_coco(coco_root, out, splits=SPLITS, link="symlink", workers=None):
    """Convert the given COCO 2014 splits under `out`; return {id: labels} of the listed images.

    The split lists and cls_labels.json are written after every mask of every split, so a
    half-done run never looks finished; cls_labels.json holds the splits of this run.
    """
    coco_root, out = Path(coco_root), Path(out)
    if not coco_root.is_dir():
        raise L2GError(f"{coco_root}: COCO root folder not found")
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown:
        raise L2GError(f"--splits: expected a comma-separated subset of {','.join(SPLITS)}, got {','.join(splits)!r}")
    if len(set(splits)) != len(splits):
        raise L2GError(f"--splits: a split is given twice ({','.join(splits)})")
    if link not in LINK_MODES:
        raise L2GError(f"--link: expected one of {', '.join(LINK_MODES)}, got {link!r}")
    if workers is not None and workers < 1:
        raise L2GError("--workers: must be at least 1")
    for split in splits:
        if not annotation_path(coco_root, split).is_file():
            raise L2GError(f"{annotation_path(coco_root, split)}: annotation file not found")
    # Every split is read and checked before any work, so a missing file stops the run at once
    # (the price: the parsed annotations of the later splits wait in memory meanwhile).
    jobs = {split: load_split(coco_root, out, split, link) for split in splits}
    labels, lists = {}, {}
    for split in splits:
        listed = convert_split(jobs.pop(split), workers or os.cpu_count() or 1)
        lists[split] = sorted(listed)
        labels.update(listed)
    for split, ids in lists.items():
        write_text(out / SPLIT_DIR / f"{split}.txt", "\n".join(ids) + "\n")
    write_json(out / LABELS_FILE, labels)
    return labels
