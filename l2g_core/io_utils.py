"""Atomic file output: every file appears under its final name only when complete."""

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np
from PIL import Image

from l2g_core.errors import L2GError


# The temporary beside a file that atomic_path is writing.
TEMPORARY_NAME = ".{name}.{token}.tmp"


def remove_stale_temporaries(path):
    """Delete the temporaries that killed atomic_path writers of `path` left behind."""
    path = Path(path)
    for stale in path.parent.glob(TEMPORARY_NAME.format(name=path.name, token="*")):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it to `path` only on success.

    Same folder, so the rename is atomic on POSIX file systems; a killed writer leaves at most a
    hidden `.NAME.*.tmp` file behind, never a file under the final name. The file gets the
    permissions of the umask, as open() gives (mkstemp's 0600 would hide results from a group).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(TEMPORARY_NAME.format(name=path.name, token=secrets.token_hex(4)))
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path, missing="not found"):
    """A JSON file's content; one-line L2GError when it is absent (`missing` says what that means)
    or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise L2GError(f"{path}: not valid JSON ({error})") from None


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def voc_palette():
    """The PASCAL VOC colour map (256 RGB entries, bit-interleaved), index 255 included."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


_PALETTE = voc_palette().flatten().tolist()


def write_label_png(path, label):
    """Write a class-index map (uint8, 255 = ignore) as a single-channel palette PNG."""
    image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    image.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_gray_png(path, array):
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(tmp, format="PNG")


def write_jpeg(path, rgb, quality=90):
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB").save(tmp, format="JPEG", quality=quality)


def file_sha256(path, chunk=1 << 20):
    """sha256 of a file's bytes, read in chunks (weights files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
