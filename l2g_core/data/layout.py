"""Reader for a dataset in the VOC layout.

The map of every file the stages exchange: docs/data_contracts.md.

    ROOT/JPEGImages/ID.jpg                 images
    ROOT/SegmentationClassAug/ID.png       class index per pixel, 255 = ignore (optional)
    ROOT/Sal/ID.png                        saliency 0..255 (optional; or made by `l2g saliency`)
    ROOT/ImageSets/Segmentation/NAME.txt   split lists (or any .txt path given in the config)
    ROOT/cls_labels.json                   {id: [mask class indices]} (optional; else from masks)

Images in grayscale, CMYK or 16 bits are accepted and converted to 8-bit RGB.
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from l2g_core.errors import L2GError
from l2g_core.io_utils import read_json

IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClassAug"
SALIENCY_DIR = "Sal"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
LABELS_FILE = "cls_labels.json"
IGNORE_INDEX = 255


def read_split_list(path):
    """Ids of a split list: one id per line, or DeepLab-style lines of paths (id = first stem)."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: split list not found")
    ids = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens:  # a path such as /JPEGImages/ID.jpg gives its stem; a plain id stays whole
            first = tokens[0]
            ids.append(Path(first).stem if "/" in first or first.endswith((".jpg", ".png")) else first)
    if not ids:
        raise L2GError(f"{path}: split list is empty")
    return ids


def _open_image(path, what):
    if not path.is_file():
        raise L2GError(f"{path}: {what} not found")
    try:
        image = Image.open(path)
        image.load()
    except UnidentifiedImageError:
        raise L2GError(f"{path}: cannot read {what} (not an image file, or corrupt from its first bytes)") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise L2GError(f"{path}: cannot read {what} ({error})") from None
    return image


def to_rgb_uint8(image):
    """8-bit RGB from any PIL mode: grayscale, palette, CMYK, 16-bit ('I;16', 'I')."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.stack([gray] * 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class VOCLayout:
    """Paths and loaders of one dataset root in the VOC layout; the saliency maps are read from
    `saliency_dir` where one is given (maps the pipeline made: results/{dataset}/saliency), else
    from ROOT/Sal."""

    def __init__(self, root, saliency_dir=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise L2GError(f"{self.root}: dataset root does not exist")
        self.saliency_dir = Path(saliency_dir) if saliency_dir is not None else self.root / SALIENCY_DIR

    def split_path(self, split):
        """A split name (`train_aug`) under ImageSets/Segmentation, or a .txt path."""
        if str(split).endswith(".txt"):
            path = Path(split)
            return path if path.is_absolute() else self.root / path
        return self.root / SPLIT_DIR / f"{split}.txt"

    def ids(self, split):
        return read_split_list(self.split_path(split))

    def image_path(self, image_id):
        return self.root / IMAGE_DIR / f"{image_id}.jpg"

    def mask_path(self, image_id):
        return self.root / MASK_DIR / f"{image_id}.png"

    def saliency_path(self, image_id):
        return self.saliency_dir / f"{image_id}.png"

    def has_saliency(self):
        return self.saliency_dir.is_dir()

    def decoded_size(self, image_id):
        """(width, height) of an image, decoded whole: a truncated or corrupt file fails here."""
        with _open_image(self.image_path(image_id), "image") as image:
            return image.size

    def load_image(self, image_id):
        """H x W x 3 uint8 RGB."""
        return to_rgb_uint8(_open_image(self.image_path(image_id), "image"))

    def load_encoded_image(self, image_id):
        """(data, (width, height)) for decoding elsewhere (decode: gpu): data is the file's bytes
        (1-D uint8) for a JPEG in RGB or grayscale, which torchvision's decode_jpeg turns into
        load_image's pixels; for any other file (PNG, CMYK JPEG, ...) the pixels themselves
        (H x W x 3 uint8), decoded here as load_image decodes them. Reads the header only to tell."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise L2GError(f"{path}: image not found")
        try:
            with Image.open(path) as image:  # lazy: the header, not the pixels
                jpeg, size = image.format == "JPEG" and image.mode in ("RGB", "L"), image.size
        except UnidentifiedImageError:
            raise L2GError(f"{path}: cannot read image (not an image file, or corrupt from its first bytes)") from None
        except (OSError, Image.DecompressionBombError) as error:
            raise L2GError(f"{path}: cannot read image ({error})") from None
        # copies: torch takes them over, and arrays of bytes or of PIL's pixels are read-only
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8) if jpeg else self.load_image(image_id)
        return data.copy(), size

    def load_mask(self, image_id):
        """H x W uint8 class indices (255 = ignore)."""
        image = _open_image(self.mask_path(image_id), "mask")
        if image.mode not in ("P", "L"):
            raise L2GError(f"{self.mask_path(image_id)}: mask must be a single-channel PNG, not {image.mode}")
        return np.asarray(image, dtype=np.uint8)

    def load_saliency(self, image_id):
        """H x W float32 in [0, 1]."""
        image = _open_image(self.saliency_path(image_id), "saliency map")
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0

    def stored_labels(self):
        """{id: sorted mask class indices} from ROOT/cls_labels.json, or None if absent."""
        path = self.root / LABELS_FILE
        if not path.is_file():
            return None
        labels = read_json(path)
        return {key: sorted(int(c) for c in value) for key, value in labels.items()}


def labels_from_mask(mask, num_classes):
    """Foreground class indices present in a mask (1..num_classes); 0 and 255 are not labels."""
    present = np.unique(mask)
    return [int(c) for c in present if 1 <= c <= num_classes]
