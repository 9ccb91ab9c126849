"""`l2g prepare`: check a dataset in the VOC layout; write its manifest, split lists and labels.

Every listed image is decoded whole (a truncated or corrupt file is refused here, not days later
in training), and its mask and saliency map are checked against its size, in `--workers` threads.

Outputs, beside `--out manifest.json`:
    labels.json     {id: [mask class indices]} for every listed image
    {split}.txt     the ids each later stage uses (training images without a class removed,
                    or refused, as --empty-images says)
    manifest.json   written last: dataset name, root, classes, counts, ground truth, saliency
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from l2g_core import __version__
from l2g_core.data.classes import CLASSES_BY_KIND, CLASSES_FILE, first_repeated
from l2g_core.data.layout import IGNORE_INDEX, VOCLayout, labels_from_mask
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_json, write_text
from l2g_core.parallel import available_cores


def configure(parser):
    parser.add_argument("--name", required=True, help="dataset name (demo, voc, coco, ...)")
    parser.add_argument("--kind", required=True, choices=[*sorted(CLASSES_BY_KIND), "custom"],
                        help="class set of the dataset; custom: --classes, or ROOT/classes.txt")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="--kind custom: the class names, mask value 1, 2, ... in order")
    parser.add_argument("--root", required=True, help="dataset root in the VOC layout")
    parser.add_argument("--split", action="append", required=True, metavar="ROLE=LIST",
                        help="a split: role (train, val, or train_subset: a part of the training split "
                             "also scored, VOC's 1,464-image train list) = list name under "
                             "ImageSets/Segmentation or a .txt path; repeat for each split")
    parser.add_argument("--empty-images", choices=("skip", "error"), default="skip",
                        help="training images with no foreground class: skip them (counted in the "
                             "manifest) or refuse the dataset (default skip)")
    parser.add_argument("--out", required=True, help="manifest.json to write; the rest goes beside it")
    parser.add_argument("--workers", type=int, default=available_cores(), help="threads decoding images and masks")


ROLES = ("train", "val", "train_subset")
SUBSET = "train_subset"


def parse_splits(items):
    splits = {}
    for item in items:
        role, sep, name = item.partition("=")
        if not sep or not role or not name:
            raise L2GError(f"--split {item!r}: expected ROLE=LIST, e.g. train=train_aug")
        if role not in ROLES:
            raise L2GError(f"--split {item!r}: unknown role {role!r} (one of {', '.join(ROLES)})")
        if role in splits:
            raise L2GError(f"--split: role {role!r} given twice")
        splits[role] = name
    if "train" not in splits:
        raise L2GError("--split: a train split is required (e.g. --split train=train_aug)")
    return splits


def check_unique(ids, list_path):
    seen = set()
    for image_id in ids:
        if image_id in seen:
            raise L2GError(f"{list_path}: id {image_id} is listed twice")
        seen.add(image_id)


def check_images(layout, ids):
    for image_id in ids:
        if not layout.image_path(image_id).is_file():
            raise L2GError(f"{layout.image_path(image_id)}: image listed but missing")


def read_checked_mask(layout, image_id, num_classes, size):
    """The mask of one image after checking its size against the image's (width, height) and its values."""
    mask = layout.load_mask(image_id)
    width, height = size
    if mask.shape != (height, width):
        raise L2GError(f"{layout.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} "
                       f"but its image is {width}x{height}")
    bad = (mask > num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise L2GError(f"{layout.mask_path(image_id)}: mask value {int(mask[bad][0])} is outside "
                       f"0..{num_classes} and not {IGNORE_INDEX} (ignore)")
    return mask


def check_one(layout, image_id, num_classes, with_saliency):
    """Decode one image whole (a truncated or corrupt file fails here) and check its saliency map
    and mask against it; return the mask's foreground classes, or None when it has no mask."""
    size = layout.decoded_size(image_id)
    if with_saliency:
        saliency = layout.load_saliency(image_id)
        if saliency.shape != (size[1], size[0]):
            raise L2GError(f"{layout.saliency_path(image_id)}: saliency map is {saliency.shape[1]}x"
                           f"{saliency.shape[0]} but its image is {size[0]}x{size[1]}")
    if not layout.mask_path(image_id).is_file():
        return None
    return labels_from_mask(read_checked_mask(layout, image_id, num_classes, size), num_classes)


def labels_for_split(layout, ids, num_classes, stored, workers, with_saliency=False):
    """Check every image of a split (decoded, with its mask and saliency map) in `workers` threads;
    image-level labels from ROOT/cls_labels.json where it has the id, else from the mask."""
    stored = stored or {}
    for image_id in ids:
        if image_id not in stored and not layout.mask_path(image_id).is_file():
            raise L2GError(f"{layout.mask_path(image_id)}: no mask and no entry in cls_labels.json, "
                           f"so image {image_id} has no image-level labels")
    labels = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        checked = pool.map(lambda image_id: check_one(layout, image_id, num_classes, with_saliency), ids)
        for image_id, present in tqdm(zip(ids, checked), total=len(ids), desc="checking images", unit="img",
                                      mininterval=1.0):
            labels[image_id] = stored.get(image_id, present)
    for image_id, present in labels.items():
        if any(not 1 <= c <= num_classes for c in present):
            raise L2GError(f"cls_labels.json: image {image_id} has a class outside 1..{num_classes}")
    return labels


def class_names_of(kind, classes, root):
    """The dataset's class names: a built-in kind's, or a custom dataset's (--classes, else
    ROOT/classes.txt, one name per line), each once."""
    if kind != "custom":
        if classes:
            raise L2GError(f"--classes: only for --kind custom (kind {kind} has its own classes)")
        return list(CLASSES_BY_KIND[kind])
    source, names = "--classes", classes
    if not names:
        source = Path(root) / CLASSES_FILE
        if not source.is_file():
            raise L2GError(f"--kind custom: give --classes or write the class names, one per line, to {source}")
        names = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    if not names:
        raise L2GError(f"{source}: no class names")
    twice = first_repeated(names)
    if twice is not None:
        raise L2GError(f"{source}: class {twice!r} is listed twice")
    return list(names)


def run(args):
    splits = parse_splits(args.split)
    layout = VOCLayout(args.root)
    class_names = class_names_of(args.kind, args.classes, args.root)
    num_classes = len(class_names)
    stored = layout.stored_labels()
    out_dir = Path(args.out).parent
    has_saliency = layout.has_saliency()
    labels, split_info, lists = {}, {}, {}
    for role, name in splits.items():
        list_path = layout.split_path(name)
        ids = layout.ids(name)
        check_unique(ids, list_path)
        check_images(layout, ids)
        has_gt = all(layout.mask_path(i).is_file() for i in ids)
        with_saliency = has_saliency and role == "train"
        if with_saliency:
            for image_id in ids:
                if not layout.saliency_path(image_id).is_file():
                    raise L2GError(f"{layout.saliency_path(image_id)}: saliency map missing "
                                   f"(the Sal folder exists, so every training image needs one)")
        labels.update(labels_for_split(layout, ids, num_classes, stored, args.workers, with_saliency))
        kept = ids
        if role == "train":
            empty = [i for i in ids if not labels[i]]
            if empty and args.empty_images == "error":
                raise L2GError(f"{list_path}: image {empty[0]} has no foreground class "
                               f"({len(empty)} such images; set empty_images: skip to leave them out)")
            if empty:
                print(f"warning: skipping {len(empty)} training images without a foreground class")
            kept = [i for i in ids if labels[i]]
            if not kept:
                raise L2GError(f"{list_path}: none of its {len(ids)} images has a foreground class (no mask "
                               f"value and no cls_labels.json entry in 1..{num_classes}): nothing to train on")
        lists[role] = kept
        split_info[role] = {
            "source": str(list_path.resolve()), "list": str((out_dir / f"{role}.txt").resolve()),
            "num_images": len(kept), "skipped_without_class": len(ids) - len(kept),
            "has_ground_truth": has_gt,
        }
    if SUBSET in lists:  # scored beside the training split: its images that the training split kept
        train = set(lists["train"])
        outside = [i for i in lists[SUBSET] if i not in train and labels[i]]
        if outside:
            raise L2GError(f"{split_info[SUBSET]['source']}: image {outside[0]} is not in the training split "
                           f"({len(outside)} such images); the {SUBSET} split must be a part of it")
        lists[SUBSET] = [i for i in lists[SUBSET] if i in train]
        split_info[SUBSET]["num_images"] = len(lists[SUBSET])
    for role, kept in lists.items():
        write_text(out_dir / f"{role}.txt", "\n".join(kept) + "\n")
    write_json(out_dir / "labels.json", {i: labels[i] for ids in lists.values() for i in ids})
    counts = np.zeros(num_classes, dtype=int)
    for image_id in lists["train"]:
        for c in labels[image_id]:
            counts[c - 1] += 1
    write_json(args.out, {
        "name": args.name, "kind": args.kind, "root": str(layout.root.resolve()),
        "class_names": class_names, "num_classes": num_classes, "has_saliency": has_saliency,
        "labels": str((out_dir / "labels.json").resolve()), "splits": split_info,
        "train_images_per_class": dict(zip(class_names, counts.tolist())),
        "l2g_version": __version__,
    })
    print(f"{args.name}: " + ", ".join(f"{r} {len(v)} images" for r, v in lists.items())
          + f", {num_classes} classes, saliency {'yes' if has_saliency else 'no'}")
