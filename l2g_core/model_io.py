"""The model files the training stages write and the later stages read.

    classifier  cls/model.pt, control/model.pt, l2g/model.pt   (l2g train-cls / train-l2g)
    segmenter   seg/model.pt, supervised/model.pt               (l2g train-seg)

Each is self-describing: format, architecture (build_args), weights, class names, the settings it
was trained with and the software versions, so a stage can rebuild it without other input.
"""

from pathlib import Path

import torch

from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path
from l2g_core.models import build_classifier, load_state_dict_checked
from l2g_core.versions import software_versions

FORMAT = "l2g-classifier/1"
SEGMENTER_FORMAT = "l2g-segmenter/1"


def _save(path, model, fmt, **fields):
    state = {"format": fmt, "build_args": model.build_args, "state_dict": model.state_dict(),
             "versions": software_versions(), **fields}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_classifier(path, model, *, stage, class_names, settings, extra=None):
    """Write a self-describing classifier: architecture, weights, classes, settings, versions."""
    _save(path, model, FORMAT, stage=stage, class_names=list(class_names), settings=settings, **(extra or {}))


def save_segmenter(path, model, *, class_names, settings, trained_on):
    """Write a DeepLab model; `trained_on` ({dataset, split, labels}) says what it has seen."""
    _save(path, model, SEGMENTER_FORMAT, stage="seg", class_names=list(class_names), settings=settings,
          trained_on=trained_on)


def read_model_file(path, fmt=FORMAT, writer="l2g train-cls / train-l2g"):
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: model file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise L2GError(f"{path}: not a readable torch file ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise L2GError(f"{path}: not a model written by {writer}")
    return state


def _check_classes(path, state, class_names):
    if class_names is not None and list(class_names) != state["class_names"]:
        raise L2GError(f"{path}: trained for {len(state['class_names'])} classes "
                       f"({', '.join(state['class_names'][:3])}, ...), the dataset has {len(class_names)} "
                       f"({', '.join(list(class_names)[:3])}, ...)")


def load_classifier(path, *, class_names=None, weights="state_dict"):
    """Rebuild the classifier stored at `path`; check its classes against `class_names`."""
    state = read_model_file(path)
    _check_classes(path, state, class_names)
    model = build_classifier(**state["build_args"])
    load_state_dict_checked(model, state[weights], source=str(path))
    return model, state


def load_segmenter(path, *, class_names=None):
    """Rebuild the DeepLab model stored at `path`; check its classes against `class_names`."""
    from l2g_core.models.deeplab import build_deeplab

    state = read_model_file(path, SEGMENTER_FORMAT, "l2g train-seg")
    _check_classes(path, state, class_names)
    model = build_deeplab(**state["build_args"])
    load_state_dict_checked(model, state["state_dict"], source=str(path))
    return model, state
