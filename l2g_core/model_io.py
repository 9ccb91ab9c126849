"""The classifier files the training stages write (`cls/model.pt`, `l2g/model.pt`) and read."""

from pathlib import Path

import torch

from l2g_core.errors import L2GError
from l2g_core.io_utils import atomic_path
from l2g_core.models import build_classifier, load_state_dict_checked
from l2g_core.runtime import software_versions

FORMAT = "l2g-classifier/1"


def save_classifier(path, model, *, stage, class_names, settings, extra=None):
    """Write a self-describing classifier: architecture, weights, classes, settings, versions."""
    state = {"format": FORMAT, "stage": stage, "build_args": model.build_args,
             "state_dict": model.state_dict(), "class_names": list(class_names),
             "settings": settings, "versions": software_versions(), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_classifier_file(path):
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: model file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise L2GError(f"{path}: not a readable torch file ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise L2GError(f"{path}: not a classifier written by l2g train-cls / train-l2g")
    return state


def load_classifier(path, *, class_names=None, weights="state_dict"):
    """Rebuild the classifier stored at `path`; check its classes against `class_names`."""
    state = read_classifier_file(path)
    if class_names is not None and list(class_names) != state["class_names"]:
        raise L2GError(f"{path}: trained for {len(state['class_names'])} classes "
                       f"({', '.join(state['class_names'][:3])}, ...), the dataset has {len(class_names)} "
                       f"({', '.join(list(class_names)[:3])}, ...)")
    model = build_classifier(**state["build_args"])
    load_state_dict_checked(model, state[weights], source=str(path))
    return model, state
