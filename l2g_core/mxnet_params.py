"""Read MXNet ``.params`` files (what ``mx.nd.save`` writes) with numpy alone.

MXNet itself does not install on current Python, yet the released ImageNet ResNet-38 weights of
PSA / L2G (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) exist only in this format. All integers
are little-endian.

File (an NDArray list)::

    uint64  magic 0x112
    uint64  reserved (0)
    uint64  number of arrays N
    N x     array (below)
    uint64  number of names (N; 0 when the list was saved without names)
    N x     uint64 length + that many bytes of UTF-8: the name, ``arg:NAME`` or ``aux:NAME``
            in a checkpoint (parameters and auxiliary states such as BatchNorm statistics)

Array, V2 layout (MXNet >= 0.12, the one written today)::

    uint32  magic 0xF993FAC9
    int32   storage type (0 dense; 1 row_sparse and 2 csr are refused here)
    uint32  ndim, then ndim x int64 dims (ndim 0: an empty array, nothing follows)
    int32   dev_type, int32 dev_id (the context it was saved from; ignored)
    int32   type flag (mshadow: 0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8,
            6 int64)
    bytes   prod(dims) x item size, C order

Older layouts, still read by MXNet and here: V1 (magic 0xF993FAC8) is V2 without the storage
type; the legacy layout has no magic at all, its first uint32 is ndim and its dims are uint32.

Every problem (not such a file, cut short, unknown type, sparse array, names missing or
duplicated, bytes after the end) is an :class:`~l2g_core.errors.L2GError` whose one line names
the file and what is wrong.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from l2g_core.errors import L2GError

LIST_MAGIC = 0x112
ARRAY_V1_MAGIC = 0xF993FAC8
ARRAY_V2_MAGIC = 0xF993FAC9
# MXNet >= 1.6 with numpy semantics (npx.set_np) writes this; its empty/scalar shapes differ.
ARRAY_V3_MAGIC = 0xF993FACA

#: mshadow type flags -> little-endian numpy dtypes.
DTYPES = {
    0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"),
    4: np.dtype("<i4"), 5: np.dtype("i1"), 6: np.dtype("<i8"),
}
STORAGE_TYPES = {1: "row_sparse", 2: "csr"}
#: A legacy array starts with its ndim: anything larger is not an array header at all.
MAX_LEGACY_NDIM = 32


class _Stream:
    """Sequential reads from an open file that turn a short read into a one-line L2GError."""

    def __init__(self, file, path):
        self.file = file
        self.path = path
        self.size = os.fstat(file.fileno()).st_size

    def left(self):
        return self.size - self.file.tell()

    def fail(self, message):
        raise L2GError(f"{self.path}: {message}")

    def need(self, nbytes, what):
        left = self.left()
        if nbytes > left:
            self.fail(f"cut short ({what} needs {nbytes} bytes, {left} left)")

    def unpack(self, fmt, what):
        """Values of struct format `fmt` (little-endian), e.g. ``"<Q"``."""
        nbytes = struct.calcsize(fmt)
        self.need(nbytes, what)
        return struct.unpack(fmt, self.file.read(nbytes))

    def read_into(self, array, what):
        # readinto fills the array in place: no second copy of a 400 MB weight file in memory.
        view = memoryview(array).cast("B")
        self.need(len(view), what)
        if self.file.readinto(view) != len(view):
            self.fail(f"cut short ({what}: read fewer bytes than the file size promised)")


def _read_shape(stream, layout, first_word, what):
    """The dims of one array; `first_word` is the legacy layout's ndim (already read)."""
    if layout == "legacy":
        ndim = first_word
        return stream.unpack(f"<{ndim}I", f"shape of {what}")
    (ndim,) = stream.unpack("<I", f"shape of {what}")
    if ndim > MAX_LEGACY_NDIM:
        stream.fail(f"{what} has {ndim} dimensions (a damaged file?)")
    dims = stream.unpack(f"<{ndim}q", f"shape of {what}")
    if any(d < 0 for d in dims):
        stream.fail(f"{what} has a negative dimension in shape {dims}")
    return dims


def _read_array(stream, what):
    """One array in the V2, V1 or legacy layout (see the module docstring)."""
    (word,) = stream.unpack("<I", f"header of {what}")
    if word == ARRAY_V2_MAGIC:
        layout = "v2"
        (storage,) = stream.unpack("<i", f"storage type of {what}")
        if storage != 0:
            kind = STORAGE_TYPES.get(storage, f"storage type {storage}")
            stream.fail(f"{what} is a sparse ({kind}) array; only dense arrays are supported")
    elif word == ARRAY_V1_MAGIC:
        layout = "v1"
    elif word == ARRAY_V3_MAGIC:
        stream.fail(f"{what} uses the NDArray V3 layout (saved with numpy semantics, "
                    "npx.set_np()), which is not supported; save it without them")
    elif word <= MAX_LEGACY_NDIM:
        layout = "legacy"
    else:
        stream.fail(f"{what} does not start with an NDArray header (0x{word:08X})")
    shape = _read_shape(stream, layout, word, what)
    if len(shape) == 0:
        # MXNet saves an empty (never allocated) NDArray as its shape alone.
        return np.zeros((0,), dtype=np.float32)
    stream.unpack("<ii", f"context of {what}")
    (flag,) = stream.unpack("<i", f"type flag of {what}")
    if flag not in DTYPES:
        stream.fail(f"{what} has an unsupported type flag {flag} "
                    f"(supported: {', '.join(str(d) for d in DTYPES.values())})")
    array = np.empty(shape, dtype=DTYPES[flag])
    stream.read_into(array, f"data of {what}")
    # Native byte order for torch.from_numpy (a no-op on little-endian machines).
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_names(stream, count):
    (num_names,) = stream.unpack("<Q", "count of names")
    if num_names == 0 and count > 0:
        stream.fail(f"its {count} arrays have no names (saved from a list, not a dict); "
                    "a parameter file names each array")
    if num_names != count:
        stream.fail(f"{num_names} names for {count} arrays")
    names = []
    for index in range(1, num_names + 1):
        what = f"name {index} of {num_names}"
        (length,) = stream.unpack("<Q", f"length of {what}")
        stream.need(length, what)
        raw = stream.file.read(length)
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            stream.fail(f"{what} is not UTF-8 text ({raw[:40]!r})")
    return names


def read_params(path) -> dict[str, np.ndarray]:
    """The arrays of an MXNet ``.params`` file, ``{stored name: array}`` in file order.

    Names are kept as stored (``arg:NAME`` / ``aux:NAME``); dtypes are kept (float32 stays
    float32). Raises a one-line L2GError naming ``path`` for anything that is not a complete,
    dense, named NDArray list.
    """
    source = str(path)
    path = Path(path)
    if not path.exists():
        raise L2GError(f"{source}: file not found")
    if not path.is_file():
        raise L2GError(f"{source}: not a regular file")
    with path.open("rb") as file:
        stream = _Stream(file, source)
        if stream.size == 0:
            stream.fail("empty file, not an MXNet parameter file")
        # Check the magic before anything else so that a foreign file gets the plain message.
        head = file.read(8)
        if head != struct.pack("<Q", LIST_MAGIC)[:len(head)]:
            stream.fail(f"not an MXNet parameter file (magic 0x{int.from_bytes(head, 'little'):X}, "
                        f"expected 0x{LIST_MAGIC:X})")
        file.seek(0)
        _magic, _reserved, count = stream.unpack("<QQQ", "file header")
        arrays = [_read_array(stream, f"array {i} of {count}") for i in range(1, count + 1)]
        names = _read_names(stream, count)
        if stream.left():
            stream.fail(f"{stream.left()} unexpected bytes after the last name "
                        "(two files joined, or a damaged file)")
    out = {}
    for name, array in zip(names, arrays):
        if name in out:
            stream.fail(f"the name {name} appears twice")
        out[name] = array
    return out


def strip_role(name: str) -> str:
    """``arg:NAME`` / ``aux:NAME`` -> ``NAME`` (names without the prefix are kept)."""
    for prefix in ("arg:", "aux:"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name
