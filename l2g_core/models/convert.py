"""MXNet ResNet-38 names -> our (the official L2G) torch names.

The released ImageNet ResNet-38 of PSA / L2G names its arrays like ``arg:res4b3_branch2a_weight``
(conv), ``arg:bn4b3_branch2a_gamma`` / ``aux:bn4b3_branch2a_moving_var`` (BatchNorm),
``arg:conv1a_weight``, ``arg:bn7_beta`` and ``arg:linear1000_weight`` (the ImageNet classifier).
The renaming follows the rules of the official converter (PengtaoJiang/L2G,
``models/resnet38_base.py``, ``convert_mxnet_to_torch``), reimplemented here, plus checks it lacks:
an array whose name fits none of the rules, two arrays with one torch name, a name or shape that
:class:`~l2g_core.models.resnet38.ResNet38` does not have, or a model entry left uncovered is a
one-line L2GError (so that, e.g., converting some other network with ``--arch resnet38`` fails
instead of writing a file that would not load).
"""

from __future__ import annotations

import torch

from l2g_core.errors import L2GError
from l2g_core.models.resnet38 import ResNet38

#: Last token of an MXNet BatchNorm array -> torch BatchNorm entry.
BN_PARAMS = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var"}
#: The ImageNet classifier: not part of the backbone, dropped.
DROPPED = "linear1000"


def resnet38_name(mx_name: str) -> str | None:
    """The torch name of one MXNet ResNet-38 array (prefix included), None if it is dropped.

    Raises L2GError (message without a file name) when the name fits none of the rules.
    """
    toks = mx_name.split("_")
    head = toks[0]  # e.g. "arg:res4b3", "aux:bn2a", "arg:conv1a", "arg:bn7"
    if "conv1a" in head:
        return "conv1a.weight"
    if DROPPED in head:
        return None
    if len(toks) >= 3 and "branch" in toks[1]:
        # res2a -> b2, res4b3 -> b4_3 (the block's stage digit and index within the stage).
        block = f"b{head[-2]}" if head.endswith("a") else f"b{head[-3]}_{head[-1]}"
        if "res" in head:
            return f"{block}.conv_{toks[1]}.weight"
        if toks[-1] in BN_PARAMS:
            return f"{block}.bn_{toks[1]}.{BN_PARAMS[toks[-1]]}"
    elif head.endswith("bn7") and toks[-1] in BN_PARAMS:
        # The official converter sends every other name here; we take only bn7's.
        return f"bn7.{BN_PARAMS[toks[-1]]}"
    raise L2GError(f"{mx_name} is not a ResNet-38 array name (expected conv1a_*, res*_branch*, "
                   "bn*_branch*, bn7_* or linear1000_*)")


def expected_resnet38_shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of ResNet38() but ``num_batches_tracked``, with its shape.

    Built on the meta device: names and shapes without allocating 400 MB of weights.
    """
    with torch.device("meta"):
        model = ResNet38()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def convert_resnet38(arrays: dict, source: str) -> tuple[dict, list[str]]:
    """Rename MXNet ``arrays`` ({stored name: array}) to a ResNet38 state dict.

    Returns (state dict in file order, dropped MXNet names). The state dict covers every
    parameter and buffer of ResNet38() with its shape (``num_batches_tracked`` excepted: the
    weights carry none, and our loader keeps the model's own); otherwise a one-line L2GError
    naming ``source`` and the first offending name.
    """
    expected = expected_resnet38_shapes()
    state, origin, dropped = {}, {}, []
    for mx_name, value in arrays.items():
        try:
            name = resnet38_name(mx_name)
        except L2GError as error:
            raise L2GError(f"{source}: {error}") from None
        if name is None:
            dropped.append(mx_name)
            continue
        if name in origin:
            raise L2GError(f"{source}: {origin[name]} and {mx_name} both map to {name}")
        if name not in expected:
            raise L2GError(f"{source}: {mx_name} maps to {name}, which ResNet-38 does not have")
        if tuple(value.shape) != expected[name]:
            raise L2GError(f"{source}: {mx_name} has shape {tuple(value.shape)}, ResNet-38's "
                           f"{name} is {expected[name]}")
        state[name], origin[name] = value, mx_name
    missing = [name for name in expected if name not in state]
    if missing:
        raise L2GError(f"{source}: no array for ResNet-38's {missing[0]} {expected[missing[0]]} "
                       f"({len(missing)} of {len(expected)} entries missing)")
    return state, dropped
