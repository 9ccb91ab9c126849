"""The detector saliency source: a salient-object network from transparent-background (MIT
licence), InSPyReNet with a Swin-B backbone (Kim et al., ACCV 2022), with weights the user brings.

Nothing downloads weights here: `saliency: {source: detector, weights: PATH}` names the file, the
package's own checkpoint (ckpt_base.pth, its `base` mode: 1024 x 1024 inputs; ckpt_fast.pth with
input_size 384), a plain state dict of the package's model class `InSPyReNet_SwinB`. Our code
builds that class and loads the state dict (strict); the package's `Remover` is not used, since
it reads and writes ~/.transparent-background and downloads a checkpoint when it finds none.

check_weights tells, before any job, whether the file is there and fits the class (the keys that
load, those missing, those it does not know, shapes that differ) without reading the tensors:
the file is memory-mapped, only names and shapes are compared. weights_record is what the
outputs record of the file: path, size, sha256. predict makes one map as the package's Remover
makes its `map` output: the image resized to the input size (PIL bilinear), ImageNet
normalisation, the network's min-max stretched sigmoid, resized back (bilinear, corners aligned).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2g_core.errors import L2GError
from l2g_core.io_utils import file_sha256

PACKAGE = "transparent-background"
PACKAGE_VERSION = "1.3.4"  # the version the pipeline was tested with (pyproject.toml's pin)
MODEL_CLASS = "transparent_background.InSPyReNet.InSPyReNet_SwinB"
DEFAULT_INPUT_SIZE = 1024  # the base checkpoint's base_size
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the package's normalisation (ImageNet)


def package_version():
    """The installed transparent-background's version (recorded with the maps)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{PACKAGE} {version(PACKAGE)}"
    except PackageNotFoundError:
        raise L2GError(f"saliency source detector needs the {PACKAGE} package; "
                       f"pip install {PACKAGE}=={PACKAGE_VERSION}") from None


def model_class():
    """The package's model builder, InSPyReNet_SwinB; a one-line error where the package is missing."""
    try:
        with warnings.catch_warnings():  # its package __init__ warns that its GUI (flet) is absent
            warnings.simplefilter("ignore")
            from transparent_background.InSPyReNet import InSPyReNet_SwinB
    except ImportError as error:
        raise L2GError(f"saliency source detector needs the {PACKAGE} package ({error}); "
                       f"pip install {PACKAGE}=={PACKAGE_VERSION}") from None
    return InSPyReNet_SwinB


def build_model(input_size=DEFAULT_INPUT_SIZE):
    """The package's network with fresh weights (no download: pretrained=False), for input_size^2
    inputs; threshold None: one pass at that size, as the package's Remover runs it."""
    builder = model_class()
    with warnings.catch_warnings():  # torch.meshgrid's indexing warning, from the Swin backbone
        warnings.simplefilter("ignore", UserWarning)
        return builder(depth=64, pretrained=False, base_size=[input_size, input_size], threshold=None)


def read_state_dict(path, where):
    """The weights file's state dict, memory-mapped (no tensor is read until used); one line on a
    missing file or one that is not a torch state dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{where}: weights file {path} not found (nothing is downloaded: copy the "
                       f"{PACKAGE} checkpoint there, e.g. ckpt_base.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many kinds on a file that is not its own
        raise L2GError(f"{where}: {path} is not a torch weights file ({type(error).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise L2GError(f"{where}: {path} holds no state dict of tensors (a {type(state).__name__})")
    return state


@dataclass
class WeightsReport:
    """How a state dict fits the model class: keys that load, missing, unknown, of another shape."""

    loaded: list
    missing: list
    unexpected: list
    mismatched: list

    def fits(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self):
        parts = [f"{len(self.loaded)} of {len(self.loaded) + len(self.missing) + len(self.mismatched)} "
                 f"tensors of {MODEL_CLASS} load"]
        for what, keys in (("missing", self.missing), ("unknown to the class", self.unexpected),
                           ("of another shape", self.mismatched)):
            if keys:
                parts.append(f"{len(keys)} {what}, e.g. {keys[0]}")
        return "; ".join(parts)


def compare(state, model_state):
    """WeightsReport of `state` against the model's own state dict (names and shapes only)."""
    expected = {key: tuple(value.shape) for key, value in model_state.items()}
    mismatched = [key for key in state if key in expected and tuple(state[key].shape) != expected[key]]
    return WeightsReport(loaded=[key for key in state if key in expected and key not in mismatched],
                         missing=[key for key in expected if key not in state],
                         unexpected=[key for key in state if key not in expected], mismatched=mismatched)


def check_weights(path, input_size=DEFAULT_INPUT_SIZE, where="saliency.weights"):
    """The WeightsReport of the weights file against the package's class (the file memory-mapped:
    no tensor is read); L2GError naming `where` when it does not fit."""
    state = read_state_dict(path, where)
    # built on the CPU (2 s, 0.4 GB): the class calls .item() while building, which the meta device refuses
    report = compare(state, build_model(input_size).state_dict())
    if not report.fits():
        raise L2GError(f"{where}: {path} is not an InSPyReNet (Swin-B) state dict: {report.describe()}")
    return report


def load_detector(path, input_size, device, where="--weights"):
    """The package's network with the file's weights (strict), in eval mode on `device`."""
    model = build_model(input_size)
    state = read_state_dict(path, where)
    report = compare(state, model.state_dict())
    if not report.fits():  # named in one line, where load_state_dict would raise a page of keys
        raise L2GError(f"{where}: {path} is not an InSPyReNet (Swin-B) state dict: {report.describe()}")
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)  # its own to() also moves the pyramid kernels it keeps outside parameters


def weights_record(path):
    """What the outputs record of the weights file: its path, size and sha256."""
    path = Path(path).resolve()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def predict(model, image, input_size, device):
    """The 0..255 uint8 map (H, W) of one H x W x 3 uint8 image, as the package's Remover makes it."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((input_size, input_size), Image.BILINEAR), dtype=np.float32)
    x = (resized / 255.0 - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
    with torch.no_grad():
        pred = F.interpolate(model(x), image.shape[:2], mode="bilinear", align_corners=True)
    return (pred[0, 0].float().cpu().numpy() * 255).astype(np.uint8)  # truncated, as its `map` output
