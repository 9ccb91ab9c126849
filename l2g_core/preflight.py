"""Checks that need no job: the dataset's folders, split lists and init files, before any GPU hour.

The workflow runs them while it builds the DAG (the input functions of workflow/rules/common.smk),
only for the datasets a target reaches, so `snakemake -n` refuses a run that would stop hours in;
`l2g doctor` runs the same functions and shows their verdicts in its table. Each check raises
L2GError with one line naming the dataset's setting and the fix.

Kept free of torch and of image decoding: a dry run must stay fast, so files are only looked at
(existence, size, first bytes), never loaded. One exception, asked for by the config alone: the
detector's weights (saliency: {source: detector}) are matched against the package's model class
(check_detector: a few seconds, names and shapes only), since a wrong file would otherwise stop
the run at its saliency jobs.
"""

import re
import struct
from pathlib import Path

from l2g_core.data.layout import IMAGE_DIR, MASK_DIR, SALIENCY_DIR, SPLIT_DIR, VOCLayout
from l2g_core.errors import L2GError
from l2g_core.pipeline import SEG_INIT_MODELS, makes_saliency, saliency_source, saliency_users

# The first bytes of the weights files a stage can read (torch.load), and of the one it cannot:
ZIP_MAGIC = b"PK\x03\x04"  # torch.save since torch 1.6 writes a zip archive
PICKLE_PROTOCOL = 0x80  # the legacy torch.save format is a pickle, protocol >= 2: opcode PROTO first
MXNET_MAGIC = 0x112  # MXNet's mx.nd.save: uint64 little-endian list magic (l2g_core/mxnet_params.py)

# `init` values that name no file: random weights, a classifier of the run itself (SEG_INIT_MODELS:
# its stage-1 or L2G classifier, DeepLab only), nothing.
NO_FILE_INITS = (None, "scratch", *SEG_INIT_MODELS)
TORCHVISION_NAME = re.compile(r"[A-Z][A-Z0-9_]*")  # IMAGENET1K_V1, DEFAULT (l2g_core.models.backbones)


def init_path(init):
    """The file an `init` setting names, or None for null, scratch, stage1, l2g or a torchvision name."""
    if init in NO_FILE_INITS or TORCHVISION_NAME.fullmatch(str(init)):
        return None
    return Path(init)


def sniff_weights(path):
    """'torch' or 'mxnet' from a weights file's first 8 bytes; L2GError (naming the file) for a
    missing or empty file or one of another kind."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: init weights file not found")
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise L2GError(f"{path}: init weights file is empty (0 bytes; an interrupted download or copy?)")
    if head.startswith(ZIP_MAGIC) or head[0] == PICKLE_PROTOCOL:
        return "torch"
    if len(head) == 8 and struct.unpack("<Q", head)[0] == MXNET_MAGIC:
        return "mxnet"
    raise L2GError(f"{path}: not a torch weights file (its first bytes {head[:4]!r} are neither a torch "
                   f"zip nor a pickle; a web page saved in place of the download?)")


def check_init(name, section, init):
    """The init file of `datasets.NAME.SECTION.init` (None when it names no file), checked by its
    first bytes. An MXNet file is refused here: every stage reads torch files only."""
    path = init_path(init)
    if path is None:
        return None
    where = f"datasets.{name}.{section}.init"
    try:
        kind = sniff_weights(path)
    except L2GError as error:
        raise L2GError(f"{where}: {error} (README, PASCAL VOC: the released weights, l2g convert-weights)") from None
    if kind == "mxnet":
        raise L2GError(f"{where}: {path} is an MXNet .params file; convert it first: "
                       f"l2g convert-weights {path} {path.with_suffix('.pt')} --arch resnet38, "
                       f"and set init to the .pt file")
    return str(init)


def check_layout(name, root):
    """The two folders every real dataset needs: the images and the masks every score uses."""
    if not Path(root).is_dir():
        raise L2GError(f"datasets.{name}.root: folder {root} does not exist; set it to the folder "
                       f"holding {IMAGE_DIR}/ and {MASK_DIR}/")
    for folder, what in ((IMAGE_DIR, "the images"), (MASK_DIR, "the class masks every score is computed against")):
        if not (Path(root) / folder).is_dir():
            raise L2GError(f"datasets.{name}.root: {root} has no {folder}/ folder ({what}); set root to the "
                           f"folder holding {IMAGE_DIR}/ and {MASK_DIR}/ (README, Pointing it at PASCAL VOC or COCO)")


def split_lists(dataset, root):
    """{role: split list path} of a dataset's splits (train, val, train_subset), as prepare reads them."""
    layout = VOCLayout(root)
    return {role: layout.split_path(split) for role, split in dataset["splits"].items()}


def check_splits(name, dataset, root):
    """Every split list the dataset names exists."""
    for role, path in split_lists(dataset, root).items():
        if not path.is_file():
            folder = Path(root) / SPLIT_DIR
            there = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
            found = f"lists there: {', '.join(there)}" if there else f"no lists in {folder}"
            hint = "; l2g prepare-coco writes them" if dataset["kind"] == "coco" else ""
            raise L2GError(f"datasets.{name}.splits.{role}: split list {path} does not exist ({found}); "
                           f"set splits.{role} to one of them or write the list, one id per line{hint}")


def check_saliency(name, dataset, root):
    """A run that reads ROOT/Sal (source folder) has it: else L2G would stop after stage 1 has
    trained. Maps the pipeline makes (source cams or detector) need no folder."""
    users = saliency_users(dataset)
    folder = Path(root) / SALIENCY_DIR
    if users and saliency_source(dataset) == "folder" and not folder.is_dir():
        raise L2GError(f"datasets.{name}: the recipe reads saliency maps ({', '.join(users)}), but {root} has no "
                       f"{SALIENCY_DIR}/ folder; add the maps to {folder}/ (ID.png, 0..255, one per training "
                       f"image), let the pipeline make them (saliency: {{source: cams}}, or source detector with "
                       f"a weights file), or set train_l2g: {{use_saliency: false}} with refine: {{background: cam}}")


def check_detector(name, dataset):
    """The detector's weights file of a run that makes its maps with it: there, a torch file, and
    the package's model class loads every tensor of it (l2g_core.detector.check_weights). Returns
    its WeightsReport, or None where the run uses no detector."""
    if not makes_saliency(dataset) or saliency_source(dataset) != "detector":
        return None
    from l2g_core import detector  # torch and the package: only for a run that uses them

    section = dataset["saliency"]
    return detector.check_weights(section["weights"], section.get("input_size", detector.DEFAULT_INPUT_SIZE),
                                  f"datasets.{name}.saliency.weights")


def check_data(name, dataset, root):
    """Every check of a real dataset's folder that reads no image: layout, split lists, saliency."""
    check_layout(name, root)
    check_splits(name, dataset, root)
    check_saliency(name, dataset, root)
