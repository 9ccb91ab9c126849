"""Where a stage runs: the precision setting and cuDNN's kernel search (l2g_core/runtime.py).

The switches are CUDA's, but they are process-wide flags that the CPU can read back; a "CUDA
device" is pretended where a test needs setup_runtime("cuda") to pass (nothing runs on it).
"""

import json

import pytest
import torch

from l2g_core import runtime as runtime_module
from l2g_core.cli import main
from l2g_core.config import load_yaml, validate_config
from l2g_core.errors import L2GError
from l2g_core.model_io import read_model_file
from l2g_core.runtime import setup_runtime
from l2g_core.stages import export_cams, predict_seg
from l2g_core.training import start_training

from conftest import REPO, TINY_CLS_OPTIONS, tiny_classifier

SEED = ("--seed", "1")
CLS_OPTIONS = [*TINY_CLS_OPTIONS, *SEED]


@pytest.fixture(autouse=True)
def restore_flags():
    """Every switch a test may turn, back as it was afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved[3])
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:3]


@pytest.fixture
def fake_cuda(monkeypatch):
    """setup_runtime("cuda") passes; nothing may actually run on the pretended device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "pretended GPU")


@pytest.mark.parametrize("precision, tf32, autocast", [("fp32", False, False), ("tf32", True, False),
                                                       ("bf16", True, True)])
def test_precision_sets_the_tf32_switches_as_it_says(precision, tf32, autocast, fake_cuda):
    for start in (True, False):  # whatever they were before
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = start
        runtime = setup_runtime("cuda", precision=precision)
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
        assert runtime.autocast_bf16 is autocast and runtime.applied_precision == precision
    # the CPU's own matmul stays IEEE fp32 whatever the setting
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    cpu = setup_runtime("cpu", precision=precision)
    assert not cpu.autocast_bf16 and cpu.applied_precision == "fp32"


def test_cudnn_searches_kernels_only_for_fixed_training_shapes(fake_cuda):
    torch.backends.cudnn.benchmark = True
    assert setup_runtime("cuda").device.type == "cuda"
    assert torch.backends.cudnn.benchmark is False  # inference: many shapes, each would be timed again
    setup_runtime("cuda", fixed_shapes=True)
    assert torch.backends.cudnn.benchmark is True
    setup_runtime("cpu", fixed_shapes=True)
    assert torch.backends.cudnn.benchmark is False


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a classifier trained one epoch with --precision tf32 (on the CPU)."""
    return tiny_classifier(tmp_path_factory.mktemp("runtime"), *SEED, "--precision", "tf32", "--device", "cpu")


def test_the_precision_reaches_the_model_file_and_the_cam_manifest(trained, tmp_path):
    manifest, model = trained
    settings = read_model_file(model)["settings"]
    assert (settings["precision"], settings["precision_applied"]) == ("tf32", "fp32")  # asked for, computed
    assert main(["export-cams", "--manifest", str(manifest), "--model", str(model), "--out", str(tmp_path / "cams"),
                 "--precision", "bf16", "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "cams" / "manifest.json").read_text())["settings"]
    assert (written["precision"], written["precision_applied"]) == ("bf16", "fp32")


class Stop(Exception):
    pass


def _stop(*args, **kwargs):
    raise Stop


def test_training_searches_kernels_and_inference_does_not(trained, fake_cuda, monkeypatch):
    manifest, model = trained
    torch.backends.cudnn.benchmark = False
    args = main_args("train-cls", "--manifest", str(manifest), "--out", "-", "--device", "cuda", *CLS_OPTIONS)
    start_training(args, "train-cls")
    assert torch.backends.cudnn.benchmark is True

    monkeypatch.setattr(export_cams, "load_classifier", _stop)  # right after its runtime setup
    with pytest.raises(Stop):
        export_cams.run(main_args("export-cams", "--manifest", str(manifest), "--model", str(model),
                                  "--out", "-", "--device", "cuda"))
    assert torch.backends.cudnn.benchmark is False

    torch.backends.cudnn.benchmark = True

    class Model:
        def to(self, device):
            return self

        def eval(self):
            return self

    monkeypatch.setattr(predict_seg, "load_segmenter", lambda *a, **k: (Model(), {}))
    monkeypatch.setattr(predict_seg, "network_views", _stop)
    with pytest.raises(Stop):
        predict_seg.run(main_args("predict-seg", "--manifest", str(manifest), "--model", "-", "--out", "-",
                                  "--device", "cuda"))
    assert torch.backends.cudnn.benchmark is False


def main_args(stage, *argv):
    from l2g_core.cli import build_parser

    return build_parser(modules=[stage]).parse_args([stage, *argv])


def test_a_bad_precision_is_one_line(capsys):
    config = load_yaml(REPO / "config" / "config.yaml")
    config["datasets"]["voc"]["train_l2g"]["precision"] = "fp16"
    with pytest.raises(L2GError, match=r"^datasets\.voc\.train_l2g\.precision: .*fp16") as error:
        validate_config(config)
    assert "\n" not in str(error.value)
    config["datasets"]["voc"]["train_l2g"]["precision"] = "fp32"
    config["datasets"]["voc"]["export_cams"]["precision"] = True
    with pytest.raises(L2GError, match=r"^datasets\.voc\.export_cams\.precision: "):
        validate_config(config)
    # on the command line: argparse's one line, exit 2
    with pytest.raises(SystemExit) as stop:
        main(["train-cls", "--manifest", "-", "--out", "-", "--precision", "fp16", *CLS_OPTIONS])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--precision" in err and "fp16" in err
    with pytest.raises(L2GError, match=r"^--precision fp16: expected one of fp32, tf32, bf16$"):
        runtime_module.check_precision("fp16")


def test_the_official_recipes_compute_in_fp32_and_the_demo_as_before():
    config = validate_config(load_yaml(REPO / "config" / "config.yaml"))
    for dataset in ("voc", "coco"):
        for section in ("train_cls", "train_l2g", "train_seg", "export_cams"):
            assert config[dataset][section]["precision"] == "fp32", (dataset, section)
    # the demo sets none: the stages' defaults (training bf16, export fp32), which compute fp32 on the CPU
    assert all("precision" not in config["demo"][s] for s in ("train_cls", "train_l2g", "train_seg", "export_cams"))
