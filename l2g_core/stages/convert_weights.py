"""`l2g convert-weights IN.params OUT.pt [--arch resnet38]`: MXNet weights -> torch state dict.

For the released ImageNet ResNet-38 of PSA / L2G (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``):

    l2g convert-weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params resnet38_imagenet.pt --arch resnet38

then give ``resnet38_imagenet.pt`` as the classifier's ``init``. Without ``--arch`` every array is
written under its MXNet name less the ``arg:`` / ``aux:`` prefix; with ``--arch resnet38`` under
our (the official L2G) ResNet-38 names, the ImageNet classifier (``linear1000``) dropped, after
checking that every ResNet-38 parameter and buffer is there with its shape. Dtypes are kept.
OUT is written atomically: on any error there is no OUT.
"""

from pathlib import Path

import torch

from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path
from l2g_core.mxnet_params import read_params, strip_role

ARCHS = ("resnet38",)


def configure(parser):
    parser.add_argument("params", metavar="IN.params", help="MXNet parameter file (mx.nd.save format)")
    parser.add_argument("out", metavar="OUT.pt", help="torch state dict to write")
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="rename for this network and check the result covers it "
                             "(default: keep the MXNet names less arg:/aux:)")


def plain_names(arrays, source):
    """{NAME: array} from {arg:NAME / aux:NAME: array}; two arrays with one NAME is an error."""
    state = {}
    for stored, value in arrays.items():
        name = strip_role(stored)
        if name in state:
            raise L2GError(f"{source}: two arrays named {name} once arg:/aux: is removed")
        state[name] = value
    return state


def check_paths(params, out):
    if Path(out).is_dir():
        raise L2GError(f"{out}: is a folder; give the file to write")
    if Path(out).exists() and Path(params).exists() and Path(out).samefile(params):
        raise L2GError(f"{out}: is the input file; give another output path")


def run(args):
    check_paths(args.params, args.out)
    arrays = read_params(args.params)
    dropped = []
    if args.arch == "resnet38":
        # Imported here: it builds a (meta-device) ResNet38 to know the expected shapes.
        from l2g_core.models.convert import convert_resnet38
        state, dropped = convert_resnet38(arrays, args.params)
    else:
        state = plain_names(arrays, args.params)
    tensors = {name: torch.from_numpy(value) for name, value in state.items()}
    with atomic_path(args.out) as tmp:
        torch.save(tensors, tmp)
    extra = f", dropped {len(dropped)} ({', '.join(dropped)})" if dropped else ""
    print(f"read {len(arrays)} arrays from {args.params}, wrote {len(tensors)} tensors "
          f"to {args.out}{extra}")
