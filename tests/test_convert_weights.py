"""`l2g convert-weights` and the MXNet .params reader (l2g_core.mxnet_params).

Checked against a real file written by MXNet (../shared/fixtures/mxnet, a MobileFaceNet whose
symbol file tells each array's shape), against ResNet-38 weights under the official MXNet names
(written by the small V2 writer of tests/mxnet_files.py), and against broken files, which must fail in one line
without leaving an output file. The ResNet-38 names the writer produces, and what we make of them,
are checked against the official converter and the official network's entries, both recreated
here from PengtaoJiang/L2G models/resnet38_base.py, independently of l2g_core.
"""

import ast
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from l2g_core.cli import main
from l2g_core.errors import L2GError
from l2g_core.models import ResNet38, build_classifier
from l2g_core.mxnet_params import read_params

from mxnet_files import TYPE_FLAGS, array_bytes, mxnet_resnet38_name, names_bytes, write_params

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "mxnet"
PARAMS = FIXTURES / "model-0000.params"
SYMBOL = FIXTURES / "model-symbol.json"
needs_fixture = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason="../shared/fixtures/mxnet not present (plain clone)")


def run_cli(capsys, *args):
    """Exit code, stdout lines and stderr lines of `l2g convert-weights ARGS`."""
    code = main(["convert-weights", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


# --- The real MXNet file against its symbol. ---

def expected_fixture_shapes(symbol):
    """{parameter name: expected shape (None where the symbol does not say)} and the aux names.

    Walks the graph in order, tracking each node's output channels: the data's channel count
    is unknown (the symbol does not give it), every other one follows from the layers.
    """
    nodes = symbol["nodes"]
    channels, expected, aux = {}, {}, set()
    for index, node in enumerate(nodes):
        op, attrs = node["op"], node.get("attrs", {})
        inputs = [nodes[i]["name"] for i, _, _ in node["inputs"]]
        in_ch = channels[node["inputs"][0][0]] if node["inputs"] else None
        if op == "null":
            channels[index] = None
        elif op == "Convolution":
            out, groups = int(attrs["num_filter"]), int(attrs.get("num_group", "1"))
            kernel = tuple(ast.literal_eval(attrs["kernel"]))
            assert in_ch is None or in_ch % groups == 0
            expected[inputs[1]] = (out, None if in_ch is None else in_ch // groups, *kernel)
            if attrs.get("no_bias", "False") != "True":
                expected[inputs[2]] = (out,)
            channels[index] = out
        elif op == "BatchNorm":  # data, gamma, beta, moving_mean, moving_var
            for name in inputs[1:5]:
                expected[name] = (in_ch,)
            aux.update(inputs[3:5])
            channels[index] = in_ch
        elif op == "LeakyReLU":
            if attrs.get("act_type") == "prelu":
                expected[inputs[1]] = (in_ch,)
            channels[index] = in_ch
        elif op == "FullyConnected":
            hidden = int(attrs["num_hidden"])
            # (num_hidden, C*H*W of the flattened input): the symbol fixes only C.
            expected[inputs[1]] = (hidden, ("multiple of", in_ch))
            if attrs.get("no_bias", "False") != "True":
                expected[inputs[2]] = (hidden,)
            channels[index] = hidden
        elif op == "elemwise_add":
            assert channels[node["inputs"][0][0]] == channels[node["inputs"][1][0]], node["name"]
            channels[index] = in_ch
        elif op in ("_minus_scalar", "_mul_scalar"):
            channels[index] = in_ch
        else:
            raise AssertionError(f"op {op} of {node['name']} not handled by this test")
    # Some parameter nodes also carry their shape; it must agree with the layer's.
    for node in nodes:
        if node["op"] == "null" and "__shape__" in node.get("attrs", {}):
            declared = tuple(ast.literal_eval(node["attrs"]["__shape__"]))
            assert shape_matches(declared, expected[node["name"]]), node["name"]
            expected[node["name"]] = declared
    return expected, aux


def shape_matches(shape, expected):
    if len(shape) != len(expected):
        return False
    for dim, want in zip(shape, expected):
        if isinstance(want, tuple):  # ("multiple of", C)
            if want[1] is not None and dim % want[1] != 0:
                return False
        elif want is not None and dim != want:
            return False
    return True


@needs_fixture
def test_fixture_every_array_has_the_shape_its_symbol_implies():
    arrays = read_params(PARAMS)
    symbol = json.loads(SYMBOL.read_text())
    params = {n["name"] for n in symbol["nodes"] if n["op"] == "null"}
    expected, aux = expected_fixture_shapes(symbol)
    assert len(arrays) == 284
    for stored, array in arrays.items():
        role, _, name = stored.partition(":")
        assert name in params, stored
        assert role == ("aux" if name in aux else "arg"), stored
        assert shape_matches(array.shape, expected[name]), (stored, array.shape, expected[name])
        assert array.dtype == np.float32, stored
    # Every parameter of the network but its input is in the file.
    assert {s.partition(":")[2] for s in arrays} == params - {"data"}


@needs_fixture
def test_fixture_layout_accounts_for_every_byte():
    """V2 arrays back to back (24 + 8*ndim bytes of header, then the data), then the names."""
    arrays = read_params(PARAMS)
    offset = 24
    for array in arrays.values():
        offset += 24 + 8 * array.ndim + array.nbytes
    offset += 8 + sum(8 + len(name.encode()) for name in arrays)
    assert offset == PARAMS.stat().st_size


@needs_fixture
def test_cli_without_arch_writes_every_array_under_its_name(tmp_path, capsys):
    out = tmp_path / "model.pt"
    code, stdout, stderr = run_cli(capsys, PARAMS, out)
    assert (code, stderr) == (0, [])
    assert stdout == [f"read 284 arrays from {PARAMS}, wrote 284 tensors to {out}"]
    arrays = read_params(PARAMS)
    state = torch.load(out, weights_only=True)
    assert list(state) == [s.partition(":")[2] for s in arrays]
    for stored, array in arrays.items():
        tensor = state[stored.partition(":")[2]]
        assert tensor.dtype == torch.float32
        assert np.array_equal(tensor.numpy(), array), stored


def test_resnet38_round_trip(tmp_path, capsys):
    with torch.device("meta"):  # names and shapes only: no 400 MB of random init
        shapes = {k: tuple(v.shape) for k, v in ResNet38().state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(0)
    written = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
    arrays = {mxnet_resnet38_name(name): value for name, value in written.items()}
    assert len(arrays) == len(written)  # the naming is one to one
    arrays["arg:linear1000_weight"] = rng.standard_normal((1000, 4096), dtype=np.float32)
    arrays["arg:linear1000_bias"] = rng.standard_normal(1000, dtype=np.float32)
    # MXNet's file order is not the model's: shuffle so that nothing depends on it.
    names = [list(arrays)[i] for i in rng.permutation(len(arrays))]
    params = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_params(params, {name: arrays[name] for name in names})
    del arrays

    out = tmp_path / "resnet38.pt"
    code, stdout, stderr = run_cli(capsys, params, out, "--arch", "resnet38")
    assert (code, stderr) == (0, [])
    dropped = ", ".join(n for n in names if "linear1000" in n)  # in file order
    assert stdout == [f"read {len(names)} arrays from {params}, wrote {len(written)} tensors "
                      f"to {out}, dropped 2 ({dropped})"]
    state = torch.load(out, weights_only=True)
    assert set(state) == set(written)

    model = ResNet38()
    result = model.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    for name, tensor in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert tensor.dtype == torch.float32
            assert np.array_equal(tensor.numpy(), written[name]), name
    del model, state

    classifier = build_classifier("resnet38", 20, pcm=True, init=out)
    for name in ("conv1a.weight", "b4_3.conv_branch2a.weight", "b7.bn_branch2b2.running_var",
                 "bn7.bias"):
        assert np.array_equal(classifier.state_dict()[name].numpy(), written[name]), name


# --- ResNet-38 against the official converter and network, both recreated from their source. ---

def official_resnet38_entries():
    """{name: shape} of the state dict of the official ResNet-38, models/resnet38_base.py Net
    (lines 106-135), built from the module structure written there, not from our model:
    ResBlock (lines 8-26): bn_branch2a, conv_branch2a (3x3), bn_branch2b1, conv_branch2b1 (3x3),
    and conv_branch1 (1x1) unless in == out and stride 1 (`same_shape`, line 12); ResBlock_bot
    (lines 55-73): bn_branch2a, conv_branch2a (1x1 to out/4), bn_branch2b1, conv_branch2b1 (3x3
    to out/2), bn_branch2b2, conv_branch2b2 (1x1 to out), conv_branch1 likewise (the dropouts hold
    nothing); every conv without bias; BatchNorm2d's weight, bias, running_mean, running_var.
    BatchNorm's num_batches_tracked is left out: the converter writes none and the official
    scripts load its output with strict=False."""
    entries = {"conv1a.weight": (64, 3, 3, 3)}  # line 110

    def batch_norm(name, channels):
        for entry in ("weight", "bias", "running_mean", "running_var"):
            entries[f"{name}.{entry}"] = (channels,)

    def conv(name, cout, cin, kernel):
        entries[f"{name}.weight"] = (cout, cin, kernel, kernel)

    def res_block(name, cin, mid, cout, stride=1):
        batch_norm(f"{name}.bn_branch2a", cin)
        conv(f"{name}.conv_branch2a", mid, cin, 3)
        batch_norm(f"{name}.bn_branch2b1", mid)
        conv(f"{name}.conv_branch2b1", cout, mid, 3)
        if cin != cout or stride != 1:
            conv(f"{name}.conv_branch1", cout, cin, 1)

    def res_block_bot(name, cin, cout, stride=1):
        batch_norm(f"{name}.bn_branch2a", cin)
        conv(f"{name}.conv_branch2a", cout // 4, cin, 1)
        batch_norm(f"{name}.bn_branch2b1", cout // 4)
        conv(f"{name}.conv_branch2b1", cout // 2, cout // 4, 3)
        batch_norm(f"{name}.bn_branch2b2", cout // 2)
        conv(f"{name}.conv_branch2b2", cout, cout // 2, 1)
        if cin != cout or stride != 1:
            conv(f"{name}.conv_branch1", cout, cin, 1)

    # lines 112-133: (name, in, mid, out, stride) of the ResBlocks, then the two ResBlock_bots
    for name, cin, mid, cout, stride in [
            ("b2", 64, 128, 128, 2), ("b2_1", 128, 128, 128, 1), ("b2_2", 128, 128, 128, 1),
            ("b3", 128, 256, 256, 2), ("b3_1", 256, 256, 256, 1), ("b3_2", 256, 256, 256, 1),
            ("b4", 256, 512, 512, 2), *[(f"b4_{i}", 512, 512, 512, 1) for i in range(1, 6)],
            ("b5", 512, 512, 1024, 1), ("b5_1", 1024, 512, 1024, 1), ("b5_2", 1024, 512, 1024, 1)]:
        res_block(name, cin, mid, cout, stride)
    res_block_bot("b6", 1024, 2048)
    res_block_bot("b7", 2048, 4096)
    batch_norm("bn7", 4096)  # line 135
    return entries


def official_convert_mxnet_to_torch(loaded):
    """convert_mxnet_to_torch (models/resnet38_base.py lines 201-249) on `loaded`, what its
    mxnet.nd.load (line 204) returns: {stored name ("arg:..." / "aux:..."): array}. Each name is
    split at "_" (line 213). A first token containing conv1a gives conv1a.weight, one containing
    linear1000 nothing (lines 215-219). Where the second token contains "branch" (lines 221-243)
    the name is BLOCK.LAYER_SECOND.ENTRY: BLOCK "b" + the stage digit for a first token ending in
    "a" (res2a -> b2), else "b{third-last char}_{last char}" (res4b3 -> b4_3); LAYER conv with
    ENTRY weight where the first token contains "res", else bn with the BatchNorm entry of the
    last token. Every other name is bn7's entry of its last token (lines 245-247). Of two names
    with one result the later wins, as in its dict."""
    # line 208: the last token of a BatchNorm array -> its torch entry
    bn_entries = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var"}
    renamed = {}
    for stored, array in loaded.items():
        tokens = stored.split("_")
        head = tokens[0]
        if "conv1a" in head:
            renamed["conv1a.weight"] = torch.from_numpy(array)
            continue
        if "linear1000" in head:
            continue
        if "branch" in tokens[1]:
            block = f"b{head[-2]}" if head[-1] == "a" else f"b{head[-3]}_{head[-1]}"
            layer, entry = ("conv", "weight") if "res" in head else ("bn", bn_entries[tokens[-1]])
            renamed[f"{block}.{layer}_{tokens[1]}.{entry}"] = torch.from_numpy(array)
        else:
            renamed[f"bn7.{bn_entries[tokens[-1]]}"] = torch.from_numpy(array)
    return renamed


def fixture_resnet38_names():
    """The MXNet names of the "released" ResNet-38 that the tests write (test_resnet38_round_trip,
    tests/test_real_architectures.py write_released_weights): mxnet_resnet38_name of every entry
    of our ResNet38 but num_batches_tracked, and the ImageNet classifier linear1000."""
    with torch.device("meta"):
        ours = [k for k in ResNet38().state_dict() if not k.endswith("num_batches_tracked")]
    return [mxnet_resnet38_name(name) for name in ours] + ["arg:linear1000_weight", "arg:linear1000_bias"]


def test_official_converter_maps_the_fixture_names_onto_the_official_network():
    official = official_resnet38_entries()
    names = fixture_resnet38_names()
    assert len(set(names)) == len(names)
    converted = official_convert_mxnet_to_torch({name: np.zeros(1, np.float32) for name in names})
    # every name lands on an entry of the official Net, each on its own, and none is left out
    assert len(converted) == len(names) - 2  # only linear1000's weight and bias dropped
    assert set(converted) == set(official)
    # the writer is the official converter's inverse on the official names themselves
    for name in official:
        one = {mxnet_resnet38_name(name): np.zeros(1, np.float32)}
        assert list(official_convert_mxnet_to_torch(one)) == [name], (name, list(one))
    # BatchNorm statistics are MXNet aux states, everything else arg: parameters
    assert all(n.startswith("aux:" if n.endswith(("moving_mean", "moving_var")) else "arg:") for n in names)
    # and our network has the official shapes, so the fixture's arrays have them too
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in ResNet38().state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert ours == official


def test_convert_weights_gives_the_official_converters_tensors(tmp_path, capsys):
    """`l2g convert-weights --arch resnet38` on a file with the official network's names and shapes
    (values drawn here) writes, for every key, the tensor the official converter makes of it."""
    rng = np.random.default_rng(2)
    arrays = {mxnet_resnet38_name(name): rng.standard_normal(shape, dtype=np.float32)
              for name, shape in official_resnet38_entries().items()}
    arrays["arg:linear1000_weight"] = rng.standard_normal((1000, 4096), dtype=np.float32)
    arrays["arg:linear1000_bias"] = rng.standard_normal(1000, dtype=np.float32)
    order = [list(arrays)[i] for i in rng.permutation(len(arrays))]  # not the network's order
    arrays = {name: arrays[name] for name in order}
    params = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_params(params, arrays)
    official = official_convert_mxnet_to_torch(arrays)  # what mxnet.nd.load returns: the arrays written

    out = tmp_path / "resnet38.pt"
    code, stdout, stderr = run_cli(capsys, params, out, "--arch", "resnet38")
    assert (code, stderr) == (0, []) and "dropped 2" in stdout[0]
    ours = torch.load(out, weights_only=True)
    assert set(ours) == set(official)
    for name, tensor in official.items():
        assert ours[name].dtype == tensor.dtype == torch.float32, name
        assert torch.equal(ours[name], tensor), name


# --- Other layouts and dtypes (written here, as the real files are not at hand). ---

@pytest.mark.parametrize("layout", ["v2", "v1", "legacy"])
def test_layouts_and_dtypes_read_back(tmp_path, layout):
    rng = np.random.default_rng(1)
    arrays = {f"arg:a_{dtype}": (rng.standard_normal((2, 3, 4)) * 50).astype(dtype)
              for dtype in TYPE_FLAGS}
    arrays["aux:scalar_like"] = np.array([7.5], dtype=np.float32)
    path = tmp_path / "x.params"
    write_params(path, arrays, layout=layout)
    read = read_params(path)
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape, name
        assert np.array_equal(read[name], array), name


# --- Broken inputs: exit 1, one line naming the file, no output file. ---

def bad_files(tmp_path):
    """{case: (path, expected phrase)}: each a file the reader must refuse."""
    small = {"arg:w": np.ones((4, 3), np.float32), "aux:m": np.zeros(4, np.float32)}
    good = array_bytes(small["arg:w"]) + array_bytes(small["aux:m"])
    header = struct.pack("<QQQ", 0x112, 0, 2)
    cases = {
        "text": (b"# not weights\nhello\n", "not an MXNet parameter file (magic 0x"),
        "empty": (b"", "empty file"),
        "torch-file": (b"PK\x03\x04" + bytes(60), "not an MXNet parameter file"),
        "header-cut": (header[:13], "cut short (file header needs 24 bytes, 13 left)"),
        "dims-cut": (header + array_bytes(small["arg:w"])[:20], "cut short (shape of array 1 of 2"),
        "names-missing": (header + good, "cut short (count of names"),
        "name-count": (header + good + names_bytes(["arg:w"]), "1 names for 2 arrays"),
        "unnamed": (header + good + names_bytes([]), "have no names"),
        "duplicate": (header + good + names_bytes(["arg:w", "arg:w"]), "appears twice"),
        "trailing": (header + good + names_bytes(list(small)) + b"\0", "1 unexpected bytes"),
        "sparse": (header + array_bytes(small["arg:w"], storage=1), "sparse (row_sparse) array"),
        "type-flag": (header + array_bytes(small["arg:w"], type_flag=9), "unsupported type flag 9"),
        "array-magic": (header + struct.pack("<I", 0xDEADBEEF) + bytes(40),
                        "array 1 of 2 does not start with an NDArray header (0xDEADBEEF)"),
    }
    out = {}
    for case, (data, phrase) in cases.items():
        path = tmp_path / f"{case}.params"
        path.write_bytes(data)
        out[case] = (path, phrase)
    return out


BAD_CASES = ["text", "empty", "torch-file", "header-cut", "dims-cut", "names-missing",
             "name-count", "unnamed", "duplicate", "trailing", "sparse", "type-flag",
             "array-magic"]


def assert_refused(capsys, tmp_path, params, phrase, *extra):
    out = tmp_path / "out" / "weights.pt"
    code, stdout, stderr = run_cli(capsys, params, out, *extra)
    assert code == 1
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith(f"l2g convert-weights: error: {params}: "), stderr[0]
    assert phrase in stderr[0], stderr[0]
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary left either


@pytest.mark.parametrize("case", BAD_CASES)
def test_broken_file_is_refused_in_one_line(tmp_path, capsys, case):
    params, phrase = bad_files(tmp_path)[case]
    assert_refused(capsys, tmp_path, params, phrase)


def test_reader_raises_l2gerror(tmp_path):
    params, _ = bad_files(tmp_path)["sparse"]
    with pytest.raises(L2GError, match="sparse"):
        read_params(params)


@needs_fixture
@pytest.mark.parametrize("where", ["data", "names"])
def test_cut_fixture_is_refused_in_one_line(tmp_path, capsys, where):
    arrays = read_params(PARAMS)
    data = PARAMS.read_bytes()
    offset = 24
    if where == "data":  # halfway through the data of the middle array
        middle = len(arrays) // 2
        for array in list(arrays.values())[:middle]:
            offset += 24 + 8 * array.ndim + array.nbytes
        array = list(arrays.values())[middle]
        offset += 24 + 8 * array.ndim + array.nbytes // 2
        phrase = f"cut short (data of array {middle + 1} of 284 needs {array.nbytes} bytes"
    else:  # halfway through the first name
        offset = len(data) - sum(8 + len(n.encode()) for n in arrays)
        first = list(arrays)[0]
        offset += 8 + len(first) // 2
        phrase = f"cut short (name 1 of 284 needs {len(first)} bytes, {len(first) // 2} left)"
    params = tmp_path / "model-0000.params"
    params.write_bytes(data[:offset])
    assert_refused(capsys, tmp_path, params, phrase)


@needs_fixture
def test_other_network_with_arch_resnet38_is_refused(tmp_path, capsys):
    assert_refused(capsys, tmp_path, PARAMS, "is not a ResNet-38 array name", "--arch", "resnet38")


def test_resnet38_missing_entry_is_refused(tmp_path, capsys):
    """A file with ResNet-38 names but one array short fails and names what is missing."""
    arrays = {"arg:conv1a_weight": np.zeros((64, 3, 3, 3), np.float32),
              "arg:bn2a_branch2a_gamma": np.zeros(64, np.float32)}
    params = tmp_path / "partial.params"
    write_params(params, arrays)
    assert_refused(capsys, tmp_path, params, "no array for ResNet-38's b2.bn_branch2a.bias (64,)",
                   "--arch", "resnet38")
    arrays["arg:bn2a_branch2a_gamma"] = np.zeros(65, np.float32)
    write_params(params, arrays)
    assert_refused(capsys, tmp_path, params, "arg:bn2a_branch2a_gamma has shape (65,)",
                   "--arch", "resnet38")
