"""Writers of MXNet .params files for the tests (the reader is l2g_core.mxnet_params): the
NDArray-list layouts, and the released ResNet-38's MXNet names."""

import struct

import numpy as np

# --- A writer of the formats, for tests only (see the reader's module docstring). ---

TYPE_FLAGS = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2,
              np.dtype("uint8"): 3, np.dtype("int32"): 4, np.dtype("int8"): 5, np.dtype("int64"): 6}


def array_header(array, layout="v2", storage=0, type_flag=None):
    """The bytes before an array's data in `layout` (v2, v1 or legacy)."""
    flag = TYPE_FLAGS[array.dtype] if type_flag is None else type_flag
    if layout == "legacy":  # no magic: ndim first, uint32 dims
        head = struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape)
    else:
        head = struct.pack("<I", 0xF993FAC9 if layout == "v2" else 0xF993FAC8)
        if layout == "v2":
            head += struct.pack("<i", storage)
        head += struct.pack(f"<I{array.ndim}q", array.ndim, *array.shape)
    return head + struct.pack("<iii", 1, 0, flag)  # context cpu(0), type flag


def little_endian(array):
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def array_bytes(array, layout="v2", storage=0, type_flag=None):
    return array_header(array, layout, storage, type_flag) + little_endian(array).tobytes()


def names_bytes(names):
    out = struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    return out


def write_params(path, arrays, layout="v2", names=None):
    """Write {name: array} as mx.nd.save does (names=[] for a list saved without names)."""
    names = list(arrays) if names is None else names
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, len(arrays)))
        for array in arrays.values():
            f.write(array_header(array, layout))
            # The raw memory, not a bytes copy: ResNet-38 is 400 MB.
            f.write(memoryview(little_endian(array)).cast("B"))
        f.write(names_bytes(names))


# --- ResNet-38 under the official MXNet names. ---

def mxnet_resnet38_name(torch_name):
    """Our ResNet-38 name -> the released MXNet model's, inverting the rules of the official
    converter (PengtaoJiang/L2G, models/resnet38_base.py, convert_mxnet_to_torch, lines 201-249):
    b2 <-> res2a / bn2a, b4_3 <-> res4b3 / bn4b3, conv weights are res*, BatchNorm bn*,
    gamma/beta/moving_mean/moving_var <-> weight/bias/running_mean/running_var, and BatchNorm
    statistics are aux: states (everything else arg:), as MXNet saves them."""
    bn = {"weight": "arg:{}_gamma", "bias": "arg:{}_beta",
          "running_mean": "aux:{}_moving_mean", "running_var": "aux:{}_moving_var"}
    parts = torch_name.split(".")
    if parts[0] == "conv1a":
        return "arg:conv1a_weight"
    if parts[0] == "bn7":
        return bn[parts[1]].format("bn7")
    stage, _, index = parts[0][1:].partition("_")
    block = f"{stage}a" if not index else f"{stage}b{index}"
    layer, branch = parts[1].split("_", 1)
    if layer == "conv":
        return f"arg:res{block}_{branch}_weight"
    return bn[parts[2]].format(f"bn{block}_{branch}")
