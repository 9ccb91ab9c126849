"""`l2g doctor DATASET`: everything a run of DATASET will need, checked before the first GPU hour.

Reads the config as Snakemake does (config/config.yaml, then each --configfile and --config on
top) and prints one table, a row per check (status ok, warn or FAIL; FAIL: the run would stop):

    config        the settings pass the schema and the config checks
    root, layout, saliency, split ROLE, classes
                  the folder: JPEGImages/, SegmentationClassAug/, Sal/ where the recipe reads it;
                  per split the ids, images, masks, saliency maps and images without a class;
                  the class list (and mask values beyond it)
    SECTION.init  each init file opened and loaded against the network it feeds: keys that load,
                  keys dropped, layers that start fresh
    saliency.weights
                  the detector's weights (saliency: {source: detector}) against the package's
                  model class: the tensors that load
    gpus          the GPUs visible (as `l2g with-gpus` counts them) against jobs.gpu, their free memory
    disk          free space under the results folder against the run's CAM, logits and label files
    recipe ...    each setting that differs from the official recipe (voc; coco for kind coco)

Exits 1 (one line on stderr naming the failed checks) when any row is FAIL. The checks that the
workflow also runs before any job are l2g_core.preflight's; this command adds the ones that read
files (images, masks, weights) and the machine.
"""

import shutil
import warnings
from collections import Counter, namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from l2g_core import preflight
from l2g_core.config import DATA_KEYS, deep_merge, load_yaml, require_root, resolve_recipes, validate_config
from l2g_core.data.classes import CLASSES_BY_KIND, CLASSES_FILE
from l2g_core.data.layout import IGNORE_INDEX, SALIENCY_DIR, VOCLayout, labels_from_mask, read_split_list
from l2g_core.errors import L2GError
from l2g_core.parallel import available_cores
from l2g_core.pipeline import SEG_INIT_MODELS, SEG_MODELS, cam_folders, saliency_source

Row = namedtuple("Row", "check status detail")
OK, WARN, FAIL = "ok", "warn", "FAIL"
DEFAULT_CONFIG = Path("config/config.yaml")  # the Snakefile's configfile, relative to where it runs
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "config.yaml"  # the official recipes

# Bytes of the run's per-image files, from measurements at VOC size (500 x 375 = 187,500 pixels):
VOC_PIXELS = 500 * 375
# docs/benchmarks.md, "CAM files at VOC size": 24,297 B per 500x375 image (uint8, compressed, 1.4 classes).
CAM_BYTES_AT_VOC_SIZE = 24_297
# l2g_core/logits_io.py: float32 logits of each view at the network's stride 8, uncompressed
# (21 x 63 x 47 x 4 B = 0.25 MB per VOC val image and view, as its docstring measures).
LOGITS_STRIDE, LOGITS_VALUE_BYTES = 8, 4


def configure(parser):
    parser.add_argument("dataset", help="the dataset to check: a key of the config's datasets (voc, coco, ...)")
    parser.add_argument("--configfile", nargs="+", action="extend", default=[], metavar="FILE",
                        help="config files on top of config/config.yaml, as snakemake --configfile")
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="settings on top, as snakemake --config (VALUE is YAML), e.g. "
                             "'datasets={voc: {root: /data/VOC2012}}'")
    parser.add_argument("--results", default="results", help="the results folder of the run (free disk)")
    parser.add_argument("--workers", type=int, default=available_cores(), help="threads reading the masks")


# --- the config ----------------------------------------------------------------------------------


def load_config(configfiles, overrides):
    """The config as Snakemake builds it: config/config.yaml where it exists (it may be left out
    when --configfile is given), each --configfile and the --config values merged on top."""
    if not DEFAULT_CONFIG.is_file() and not configfiles:
        raise L2GError(f"{DEFAULT_CONFIG}: config file not found (run from the repository, or give --configfile)")
    config = load_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}
    for path in configfiles:
        config = deep_merge(config, load_yaml(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise L2GError(f"--config {item!r}: expected KEY=VALUE")
        try:
            config = deep_merge(config, {key: yaml.safe_load(value)})
        except yaml.YAMLError:
            raise L2GError(f"--config {item!r}: the value is not valid YAML") from None
    return config


def dataset_settings(args):
    """(the dataset's resolved settings, row): the row is FAIL with the config's one-line error."""
    sources = " + ".join(map(str, [*([DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []), *args.configfile]))
    try:
        config = load_config(args.configfile, args.config)
        datasets = validate_config(config)
    except L2GError as error:
        return None, Row("config", FAIL, str(error))
    if args.dataset not in datasets:
        return None, Row("config", FAIL, f"datasets.{args.dataset}: not a dataset of {sources} "
                                         f"(one of {', '.join(datasets)})")
    dataset = datasets[args.dataset]
    recipe = f" (recipe {dataset['recipe']})" if dataset.get("recipe") else ""
    return dataset, Row("config", OK, f"{sources}: datasets.{args.dataset} valid, kind {dataset['kind']}{recipe}")


# --- the dataset folder --------------------------------------------------------------------------


def class_names(name, dataset, root):
    """The class list as prepare reads it: the kind's, or a custom dataset's (config, else classes.txt)."""
    if dataset["kind"] != "custom":
        return list(CLASSES_BY_KIND[dataset["kind"]])
    if dataset.get("classes"):
        return list(dataset["classes"])
    path = Path(root) / CLASSES_FILE
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not names:
        raise L2GError(f"datasets.{name}: kind custom needs its class names (classes: [...] or {path})")
    return names


def image_size(layout, image_id):
    """((width, height) from the image's header, no decoding; or None, problem)."""
    path = layout.image_path(image_id)
    try:
        with Image.open(path) as image:
            return image.size, None
    except (OSError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        return None, f"{path}: cannot read image ({error})"


def mask_values(layout, image_id):
    """(the values of one mask, decoded, and its (width, height); or None, problem). (None, None)
    when the image has no mask."""
    if not layout.mask_path(image_id).is_file():
        return None, None
    try:
        mask = layout.load_mask(image_id)
    except L2GError as error:
        return None, str(error)
    return (np.unique(mask), (mask.shape[1], mask.shape[0])), None


def read_split(layout, ids, stored, num_classes, workers):
    """Counts of one split: images, masks, saliency maps, images without a class; the files prepare
    would refuse (unreadable, a mask of another size, mask values beyond the class list); the mean
    image size and the mean mask file size (for the disk estimate)."""
    images = [i for i in ids if layout.image_path(i).is_file()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        sizes = dict(zip(images, pool.map(lambda i: image_size(layout, i), images)))
        masks = dict(zip(ids, pool.map(lambda i: mask_values(layout, i), ids)))
    unreadable = [problem for _, problem in [*sizes.values(), *masks.values()] if problem]
    decoded = {i: found for i, (found, _) in masks.items() if found is not None}
    # image-level labels as prepare takes them: cls_labels.json first, else the mask's classes
    labels = {i: stored[i] for i in ids if i in stored}
    labels.update({i: labels_from_mask(values, num_classes) for i, (values, _) in decoded.items() if i not in labels})
    pixels = [size[0] * size[1] for size, _ in sizes.values() if size]
    return {
        "ids": len(ids), "repeated": [i for i, count in Counter(ids).items() if count > 1], "images": len(images), "masks": sum(layout.mask_path(i).is_file() for i in ids),
        "saliency": sum(layout.saliency_path(i).is_file() for i in ids) if layout.has_saliency() else 0,
        "unreadable": unreadable,
        # prepare's rule: an image needs a mask or a cls_labels.json entry for its image-level labels
        "unlabelled": [i for i in ids if i not in stored and not layout.mask_path(i).is_file()],
        "empty": [i for i, found in labels.items() if found == []],
        "other_size": [i for i, (_, size) in decoded.items() if sizes.get(i, (None,))[0] not in (None, size)],
        "beyond": sorted({int(c) for values, _ in decoded.values() for c in values
                          if c > num_classes and c != IGNORE_INDEX}),
        "mean_pixels": float(np.mean(pixels)) if pixels else 0.0,
        "mask_bytes": float(np.mean([layout.mask_path(i).stat().st_size for i in decoded])) if decoded else 0.0,
    }


def split_row(role, split, counts, dataset, num_classes, saliency_read):
    """The row of one split: FAIL where prepare (or L2G) would refuse it."""
    n = counts["ids"]
    detail = (f"{n:,} ids: {counts['images']:,} images, {counts['masks']:,} masks, "
              f"{counts['saliency']:,} saliency maps ({100 * counts['saliency'] / n:.0f}%), "
              f"{len(counts['empty']):,} without a class")
    problems = []
    if counts["repeated"]:
        problems.append(f"id {counts['repeated'][0]} is listed twice")
    if counts["images"] < n:
        problems.append(f"{n - counts['images']:,} images missing")
    if counts["unreadable"]:
        problems.append(f"{len(counts['unreadable']):,} unreadable files, e.g. {counts['unreadable'][0]}")
    if counts["other_size"]:
        problems.append(f"{len(counts['other_size']):,} mask(s) of another size than their image "
                        f"(e.g. {counts['other_size'][0]})")
    if counts["unlabelled"]:
        problems.append(f"{len(counts['unlabelled']):,} images with no mask and no cls_labels.json entry "
                        f"(e.g. {counts['unlabelled'][0]})")
    if counts["beyond"]:
        problems.append(f"mask values {counts['beyond'][:5]} beyond the {num_classes} classes")
    if role == "train" and saliency_read and counts["saliency"] < n:
        problems.append(f"{n - counts['saliency']:,} training images without a saliency map")
    if role == "train" and counts["empty"]:
        if len(counts["empty"]) == n:
            problems.append("no image has a class: nothing to train on")
        elif dataset.get("empty_images", "skip") == "error":
            problems.append(f"images without a class (e.g. {counts['empty'][0]}) and empty_images: error")
    if problems:
        return Row(f"split {role} ({split})", FAIL, detail + "; " + "; ".join(problems))
    status = WARN if role == "train" and counts["empty"] else OK
    return Row(f"split {role} ({split})", status, detail)


def folder_rows(name, dataset, root, workers):
    """(rows, {role: counts}, class names or None) of the dataset's folder; a FAIL stops the rows
    that need what failed."""
    try:
        preflight.check_layout(name, root)
    except L2GError as error:
        return [Row("layout", FAIL, str(error))], {}, None
    layout = VOCLayout(root)
    found = [f for f in ("JPEGImages", "SegmentationClassAug", SALIENCY_DIR, "cls_labels.json")
             if (layout.root / f).exists()]
    rows = [Row("layout", OK, f"{root}: {', '.join(found)}")]
    users = preflight.saliency_users(dataset)
    source = saliency_source(dataset)
    try:
        preflight.check_saliency(name, dataset, root)
        if users and source != "folder":
            detail = (f"read by {', '.join(users)}; made by the pipeline (saliency: {{source: {source}}}) "
                      f"into results/{name}/saliency/, {SALIENCY_DIR}/ not read")
        elif users:
            detail = f"read by {', '.join(users)}; {SALIENCY_DIR}/ present"
        else:
            detail = f"not read by this recipe ({SALIENCY_DIR}/ {'present' if layout.has_saliency() else 'absent'})"
        rows.append(Row("saliency", OK, detail))
    except L2GError as error:
        rows.append(Row("saliency", FAIL, str(error)))
    try:
        classes = class_names(name, dataset, root)
    except L2GError as error:
        return rows + [Row("classes", FAIL, str(error))], {}, None
    rows.append(Row("classes", OK, f"{len(classes)} + background: {', '.join(classes)}"))
    stored = layout.stored_labels() or {}
    counts = {}
    for role, path in preflight.split_lists(dataset, root).items():
        split = dataset["splits"][role]
        try:
            preflight.check_splits(name, {**dataset, "splits": {role: split}}, root)
            ids = read_split_list(path)
        except L2GError as error:
            rows.append(Row(f"split {role} ({split})", FAIL, str(error)))
            continue
        counts[role] = read_split(layout, ids, stored, len(classes), workers)
        reads_folder = bool(users) and source == "folder" and layout.has_saliency()
        rows.append(split_row(role, split, counts[role], dataset, len(classes), reads_folder))
    return rows, counts, classes


def synthetic_counts(dataset):
    """A synthetic dataset's sizes from its settings, before it is generated (for the disk
    estimate; its label files have no size yet)."""
    gen = dataset["synthetic"]
    pixels = float(gen["size"] ** 2)
    return {role: {"ids": gen[role], "mean_pixels": pixels, "mask_bytes": None} for role in ("train", "val")}


def data_rows(name, dataset, results, workers):
    """(rows, counts, class names or None) of the data: the folder of a real dataset, or of a
    synthetic one once the run has generated it."""
    if dataset["kind"] == "synthetic":
        root = Path(results) / name / "data" / "synthetic"
        if not root.is_dir():
            return [Row("root", OK, f"{root}: generated by the run (make-synthetic)")], \
                synthetic_counts(dataset), list(CLASSES_BY_KIND["synthetic"])
    else:
        try:
            root = require_root({"datasets": {name: dataset}}, name)
        except L2GError as error:
            return [Row("root", FAIL, str(error))], {}, None
    rows, counts, classes = folder_rows(name, dataset, root, workers)
    return [Row("root", OK, str(root))] + rows, counts, classes


# --- init files ----------------------------------------------------------------------------------


def torchvision_row(check, backbone, init):
    """A torchvision weights name: only for resnet50/101; loaded from the torch hub cache or fetched."""
    import torch
    import torchvision

    if backbone not in ("resnet50", "resnet101"):
        return Row(check, FAIL, f"{init}: torchvision weights exist only for resnet50/resnet101, not {backbone}")
    enum = torchvision.models.get_model_weights(backbone)
    if init not in enum.__members__:
        return Row(check, FAIL, f"{init}: unknown torchvision weights for {backbone} (known: {', '.join(enum.__members__)})")
    url = enum[init].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return Row(check, OK, f"{init}: torchvision {backbone} weights, in the torch hub cache ({cached})")
    return Row(check, WARN, f"{init}: not in the torch hub cache; the first job downloads {url} (needs internet there)")


def key_summary(keys, limit=8):
    """The layers of some state-dict keys (fc.weight, fc.bias -> fc), a few of them and the count."""
    layers = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))
    shown = ", ".join(layers[:limit])
    return f"{shown} (+{len(layers) - limit} more layers)" if len(layers) > limit else (shown or "none")


def size(count):
    """Bytes for a person: 512 B, 3.4 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def classifier_init_row(check, section):
    """train_cls.init loaded as the run loads it: into the backbone, strict, classification heads
    (backbones.HEAD_PREFIXES) dropped; the CAM layers (fc8, and with pcm the PCM layers) start fresh."""
    import torch

    from l2g_core.models import build_backbone, load_state_dict_checked, read_state_dict
    from l2g_core.models.backbones import HEAD_PREFIXES
    from l2g_core.models.classifier import CAMClassifier

    path = section["init"]
    state = read_state_dict(path)
    with torch.device("meta"):  # names and shapes only: no memory for the weights
        backbone = build_backbone(section["backbone"])
    with warnings.catch_warnings():  # copying into meta tensors is a no-op, which torch warns about
        warnings.simplefilter("ignore", UserWarning)
        report = load_state_dict_checked(backbone, state, source=str(path), strict=False)
    fresh = [layer for layer in CAMClassifier.new_layer_names if layer == "fc8" or section.get("pcm")]
    wrong = [key for key in report.unexpected if not key.startswith(HEAD_PREFIXES)]
    loaded = len(state) - len(report.unexpected)
    detail = (f"{path} into {section['backbone']}: {loaded} tensors load; dropped: {key_summary(report.unexpected)}; "
              f"fresh: {', '.join(fresh)}")
    if report.missing or wrong:
        problem = (f"{len(report.missing)} backbone entries missing, e.g. {report.missing[0]}" if report.missing
                   else f"unexpected entries outside the heads, e.g. {wrong[0]}")
        return Row(check, FAIL, f"{detail}; {problem}: not a {section['backbone']} file")
    return Row(check, OK, detail)


def deeplab_init_row(check, section, num_labels):
    """train_seg.init as DeepLab-v2 loads it (l2g_core.models.deeplab.inspect_deeplab_init)."""
    from l2g_core.models.deeplab import inspect_deeplab_init

    report = inspect_deeplab_init(section["init"], num_labels)
    return Row(check, OK,
               f"{section['init']}: {report.layout}, into DeepLab-v2 {section['backbone']}: {len(report.loaded)} tensors "
               f"load; dropped: {key_summary(list(report.dropped))}; fresh: {key_summary(list(report.fresh))}")


def init_row(name, key, section, num_labels):
    """One init setting: its file sniffed (as the workflow does) and opened against its network."""
    check, init = f"{key}.init", section.get("init")
    try:
        if preflight.check_init(name, key, init) is not None:
            return classifier_init_row(check, section) if key == "train_cls" else \
                deeplab_init_row(check, section, num_labels)
    except L2GError as error:
        return Row(check, FAIL, str(error))
    if init in SEG_INIT_MODELS:
        return Row(check, OK, f"the run's own classifier ({SEG_INIT_MODELS[init]}/model.pt)")
    if init in (None, "scratch"):
        status = OK if section["backbone"] == "small" else WARN
        return Row(check, status, f"random weights ({init or 'null'}): {section['backbone']} trained from scratch")
    return torchvision_row(check, section["backbone"], init)


def init_rows(name, dataset, num_classes):
    return [init_row(name, key, dataset[key], num_classes + 1) for key in ("train_cls", "train_seg")]


def detector_rows(name, dataset):
    """The detector's weights file (saliency: {source: detector}) against the package's model class,
    as the workflow checks it before any job: the tensors that load."""
    try:
        report = preflight.check_detector(name, dataset)
    except L2GError as error:
        return [Row("saliency.weights", FAIL, str(error))]
    if report is None:
        return []
    from l2g_core.detector import package_version

    path = Path(dataset["saliency"]["weights"])
    return [Row("saliency.weights", OK, f"{path} ({size(path.stat().st_size)}): {report.describe()} "
                                        f"({package_version()})")]


# --- the machine ---------------------------------------------------------------------------------


def gpu_row(dataset):
    """GPUs as `l2g with-gpus` counts them against the most any job asks for; their free memory."""
    from l2g_core import gpus

    wanted = max(dataset["jobs"]["gpu"].values())
    try:
        devices, source = gpus.visible_devices()
    except L2GError as error:
        return Row("gpus", FAIL, str(error))
    memory = cuda_memory()
    detail = f"{len(devices)} visible ({source}){': ' + memory if memory else ''}; jobs.gpu asks up to {wanted} per job"
    if wanted > len(devices):
        return Row("gpus", FAIL, f"{detail}: the GPU jobs cannot start (set jobs.gpu to 0 to run on the CPU)")
    return Row("gpus", OK, detail)


def cuda_memory():
    """'NAME: free/total GiB' of each device torch sees ('' without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return ""
    parts = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        parts.append(f"{index} {torch.cuda.get_device_name(index)} {free / 2**30:.0f}/{total / 2**30:.0f} GiB free")
    return ", ".join(parts)


def estimated_bytes(dataset, counts, num_classes):
    """{folder: bytes} of the run's per-image outputs, from this dataset's image counts and sizes."""
    train, val = counts["train"], counts["val"]
    scale = train["mean_pixels"] / VOC_PIXELS
    views = sum(s * s for s in dataset["predict_seg"]["scales"]) * (2 if dataset["predict_seg"]["flip"] else 1)
    logits = LOGITS_VALUE_BYTES * (num_classes + 1) * val["mean_pixels"] / LOGITS_STRIDE**2 * views
    # label PNGs: sized as this dataset's own masks (the same kind of file: VOC palette, same size)
    predictions = 2 if dataset["predict_seg"]["crf"] else 1  # with the CRF, the no-CRF labels too
    sizes = {"CAMs": len(cam_folders(dataset)) * train["ids"] * CAM_BYTES_AT_VOC_SIZE * scale,
             "logits": len(SEG_MODELS) * val["ids"] * logits}
    if train["mask_bytes"] is not None:
        sizes["labels"] = train["ids"] * train["mask_bytes"] + len(SEG_MODELS) * predictions * val["ids"] * val["mask_bytes"]
    return sizes


def disk_row(dataset, counts, num_classes, results):
    """Free space where the results go, against the per-image folders the run writes."""
    if "train" not in counts or "val" not in counts:
        return Row("disk", WARN, "no estimate: the train and val splits could not be read")
    place = Path(results).resolve()
    while not place.exists():
        place = place.parent
    free = shutil.disk_usage(place).free
    sizes = estimated_bytes(dataset, counts, num_classes)
    need = sum(sizes.values())
    detail = (f"{size(free)} free at {place}; the run writes about {size(need)} of per-image files ("
              + ", ".join(f"{k} {size(v)}" for k, v in sizes.items()) + "; model files come on top)")
    return Row("disk", FAIL if free < need else OK, detail)


# --- the recipe ----------------------------------------------------------------------------------


def flat(settings, prefix=""):
    """{dotted key: value} of nested settings."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_rows(dataset):
    """One warn row per config section whose settings differ from the official recipe (the shipped
    config's voc section, coco's for kind coco); data keys, expectations and jobs (the machine) left out."""
    official_name = "coco" if dataset["kind"] == "coco" else "voc"
    official = resolve_recipes(load_yaml(SHIPPED_CONFIG))[official_name]
    ignored = (*DATA_KEYS, "jobs", "expect")  # expect: the scores a dataset's own data should reach
    ours = flat({k: v for k, v in dataset.items() if k not in ignored})
    theirs = flat({k: v for k, v in official.items() if k not in ignored})
    sections = {}
    for key in [*ours, *(k for k in theirs if k not in ours)]:  # in the dataset's order
        if ours.get(key) != theirs.get(key):
            section, _, setting = key.partition(".")
            sections.setdefault(section, []).append(
                f"{setting or section} {ours.get(key, 'unset')} (official {theirs.get(key, 'unset')})")
    if not sections:
        return [Row("recipe", OK, f"the official {official_name} recipe ({SHIPPED_CONFIG}), data and jobs aside")]
    return [Row(f"recipe: {section}", WARN, "; ".join(changes)) for section, changes in sections.items()]


# --- the table -----------------------------------------------------------------------------------


def format_table(rows):
    """The rows as aligned columns: check, status, detail."""
    width = max(len(row.check) for row in [*rows, Row("check", "", "")])
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{row.check:<{width}}  {row.status:<6}  {row.detail}" for row in rows]
    return "\n".join(lines)


def run(args):
    dataset, config_row = dataset_settings(args)
    rows = [config_row]
    if dataset is not None:
        folder, counts, classes = data_rows(args.dataset, dataset, args.results, args.workers)
        rows += folder
        # without a readable class list, the config's (or the kind's) count sizes DeepLab's head
        num_classes = len(classes or CLASSES_BY_KIND.get(dataset["kind"], dataset.get("classes") or []))
        rows += init_rows(args.dataset, dataset, num_classes)
        rows += detector_rows(args.dataset, dataset)
        rows += [gpu_row(dataset), disk_row(dataset, counts, num_classes, args.results), *recipe_rows(dataset)]
    print(format_table(rows))
    failed = [row.check for row in rows if row.status == FAIL]
    if failed:
        raise L2GError(f"{len(failed)} check(s) failed, the run would stop: {', '.join(failed)} (see the table above)")
