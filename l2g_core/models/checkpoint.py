"""Reading torch checkpoints and loading them into models, with one-line errors.

Accepted files (all read with ``torch.load(weights_only=True)`` unless ``allow_pickle=True``):

- a plain state dict ``{name: tensor}``;
- ``{'state_dict': {...}, ...}`` -- the official L2G checkpoints (``{'epoch', 'global_counter',
  'state_dict', 'local_dict', 'optimizer'}``; ``state_dict`` is the global network, the one used
  to export CAMs) and most training scripts;
- ``{'model': {...}, ...}`` -- torchvision references style.

``module.`` prefixes (DataParallel / DistributedDataParallel) and ``_orig_mod.`` prefixes
(``torch.compile``) are stripped. ``num_batches_tracked`` buffers missing from a file (weights
converted from MXNet, old torch versions) are not an error: the model keeps its own.

Every problem is an :class:`~l2g_core.errors.L2GError` whose single line names the file and the
first offending parameter, e.g.
``ckpt.pth: parameter fc8.weight has shape (21, 4096, 1, 1), model expects (7, 4096, 1, 1)``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from l2g_core.errors import L2GError

#: Prefixes removed from every key, outermost first, repeatedly.
_STRIPPED_PREFIXES = ("module.", "_orig_mod.")
#: Layers of the PCM module of the official L2G ResNet-38 classifier.
_PCM_PREFIXES = ("f8_3.", "f8_4.", "f9.")


class LoadReport(NamedTuple):
    """What :func:`load_state_dict_checked` skipped (only ever non-empty with ``strict=False``)."""

    missing: list[str]
    unexpected: list[str]


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _shape(t) -> str:
    return str(tuple(t.shape))


def strip_prefixes(state_dict: Mapping) -> dict:
    """Return a copy of ``state_dict`` with ``module.`` / ``_orig_mod.`` key prefixes removed."""
    out = {}
    for key, value in state_dict.items():
        key = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def extract_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object and strip its key prefixes.

    ``source`` names the file in error messages.
    """
    if not isinstance(obj, Mapping):
        raise L2GError(f"{source}: not a checkpoint (holds a {type(obj).__name__}, not a dict)")
    state = obj
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            break
    if not state:
        raise L2GError(f"{source}: the checkpoint holds no parameters")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        if state is obj:
            keys = ", ".join(sorted(str(k) for k in obj)[:8])
            raise L2GError(f"{source}: no state dict found (top-level keys: {keys})")
        raise L2GError(f"{source}: entry {bad[0]} of the state dict is not a tensor")
    return strip_prefixes(state)


def read_checkpoint(path, *, allow_pickle: bool = False):
    """The object stored in a torch checkpoint file, loaded on the CPU, with one-line errors.

    ``allow_pickle=True`` loads with ``weights_only=False``, which runs arbitrary code stored in
    the file: use it only for files you trust that hold Python objects besides tensors.
    """
    source = str(path)
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{source}: checkpoint file not found")
    hint = ""
    if path.suffix == ".params":
        hint = "; MXNet .params weights must be converted to a torch state dict first"
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a pickle of non-allowlisted objects
            raise L2GError(
                f"{source}: the checkpoint holds Python objects besides tensors; "
                "load it with allow_pickle=True only if you trust the file"
            ) from None
        raise L2GError(f"{source}: not a torch checkpoint (unreadable pickle data){hint}") from None
    except Exception as exc:  # corrupt zip, truncated file, foreign format (e.g. MXNet .params)
        raise L2GError(
            f"{source}: not a torch checkpoint ({type(exc).__name__}: {_one_line(exc, 120)}){hint}"
        ) from None


def read_state_dict(path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a torch checkpoint file and return its (prefix-stripped) state dict on the CPU."""
    return extract_state_dict(read_checkpoint(path, allow_pickle=allow_pickle), str(path))


def _hint_for(key: str, *, missing: bool) -> str:
    if key.startswith(_PCM_PREFIXES):
        if missing:
            return "; the checkpoint has no PCM layers: build the model with pcm=False"
        return "; the checkpoint was trained with PCM: build the model with pcm=True"
    return ""


def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping,
    *,
    source: str,
    strict: bool = True,
    ignore_unexpected: tuple[str, ...] = (),
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` after checking names and shapes.

    Shapes must always match. With ``strict=True`` every model entry must be in the state dict
    (``num_batches_tracked`` excepted) and every state-dict entry must be in the model, except
    keys starting with one of ``ignore_unexpected``. Errors name ``source`` and the first
    offending parameter in the model's order (then, for unexpected keys, in the file's order).
    """
    state_dict = strip_prefixes(state_dict)
    expected = model.state_dict()
    missing: list[str] = []
    for key, ref in expected.items():
        if key not in state_dict:
            if key.endswith("num_batches_tracked"):
                continue
            if strict:
                n_missing = sum(
                    1 for k in expected
                    if k not in state_dict and not k.endswith("num_batches_tracked")
                )
                raise L2GError(
                    f"{source}: parameter {key} {_shape(ref)} is missing from the checkpoint "
                    f"({n_missing} of {len(expected)} model entries missing"
                    f"{_hint_for(key, missing=True)})"
                )
            missing.append(key)
            continue
        value = state_dict[key]
        if tuple(value.shape) != tuple(ref.shape):
            hint = ""
            if key == "fc8.weight" and value.dim() == 4 and value.shape[1:] == ref.shape[1:]:
                hint = (
                    f" (the checkpoint has {value.shape[0] - 1} classes, "
                    f"the model {ref.shape[0] - 1}, each + background)"
                )
            raise L2GError(
                f"{source}: parameter {key} has shape {_shape(value)}, "
                f"model expects {_shape(ref)}{hint}"
            )
    unexpected = [
        k for k in state_dict if k not in expected and not k.startswith(tuple(ignore_unexpected))
    ]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if unexpected and strict:
        key = unexpected[0]
        raise L2GError(
            f"{source}: unexpected parameter {key} {_shape(state_dict[key])}, not in the model "
            f"({len(unexpected)} unexpected entries{_hint_for(key, missing=False)})"
        )
    model.load_state_dict({k: state_dict[k] for k in expected if k in state_dict}, strict=False)
    return LoadReport(missing=missing, unexpected=unexpected)


def load_weights(
    model: nn.Module, path: str | os.PathLike, *, strict: bool = True, allow_pickle: bool = False
) -> LoadReport:
    """Load the checkpoint at ``path`` into ``model`` (see the module docstring for formats).

    For ResNet-38 the official L2G checkpoints load as they are: our ResNet-38 classifier uses
    the official parameter names (``conv1a``, ``b2`` ... ``b7``, ``bn7``, ``fc8`` and, with
    ``pcm=True``, ``f8_3``, ``f8_4``, ``f9``), so build it with ``pcm=True`` for them.
    With ``strict=False`` missing and unexpected entries are skipped (and reported in the
    returned :class:`LoadReport`); shape mismatches are always errors.
    """
    state_dict = read_state_dict(path, allow_pickle=allow_pickle)
    return load_state_dict_checked(model, state_dict, source=str(path), strict=strict)
