"""The bad-input corpus (issue 7, point 1): each bad input is built in a temporary folder from a
tiny valid dataset and given to the real `l2g` command (or the workflow, for the config), which
must answer with exit status 1, one stderr line naming the file or setting and the problem, no
traceback, and nothing written. Grayscale, CMYK and 16-bit images are accepted and converted.
"""

import copy
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from l2g_core.cam_io import load_cams
from l2g_core.cli import main
from l2g_core.config import validate_config
from l2g_core.data.layout import VOCLayout
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_label_png

from conftest import BIN, TINY_CLS_OPTIONS, run_snakemake, tiny_config

ID = "train_00001"  # the image each bad input is made of
L2G_OPTIONS = ["--epochs", "1", "--input-size", "64", "--crop-size", "32", "--num-crops", "4", "--batch-size", "2",
               "--lr", "0.01"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid synthetic dataset (4 train, 2 val images of 64 px), prepared, and a classifier of it."""
    root = tmp_path_factory.mktemp("base")
    assert main(["make-synthetic", str(root / "data"), "--train", "4", "--val", "2", "--size", "64",
                 "--workers", "1"]) == 0
    assert prepare(root / "data", root / "prep") == 0
    assert main(["train-cls", "--manifest", str(root / "prep" / "manifest.json"),
                 "--out", str(root / "cls" / "model.pt"), *TINY_CLS_OPTIONS]) == 0
    return root


def prepare(data, out, *extra):
    return main(["prepare", "--name", "demo", "--kind", "synthetic", "--root", str(data), "--split", "train=train",
                 "--split", "val=val", "--out", str(out / "manifest.json"), "--workers", "2", *extra])


def error_lines(stderr):
    """stderr without the progress bars (tqdm redraws them with carriage returns)."""
    return [line for line in stderr.splitlines() if line.strip() and "%|" not in line]


def assert_refused(capsys, code, stage, *fragments):
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 1, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"l2g {stage}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- the dataset: l2g prepare -------------------------------------------------------------------


def _unlink(data, relative):
    (data / relative).unlink()


def _truncate(data):
    path = data / "JPEGImages" / f"{ID}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(data):
    (data / "JPEGImages" / f"{ID}.jpg").write_bytes(b"\xff\xd8 this is no JPEG " * 20)


def _mask_size(data):
    write_label_png(data / "SegmentationClassAug" / f"{ID}.png", np.zeros((64, 65), dtype=np.uint8))


def _mask_value(data):
    path = data / "SegmentationClassAug" / f"{ID}.png"
    mask = np.asarray(Image.open(path)).copy()
    assert (mask == 255).any()  # the ignore index itself is allowed (the masks have it at borders)
    mask[10, 10] = 7  # six classes: 0..6 and 255 are valid
    write_label_png(path, mask)


def _listed_twice(data):
    with open(data / "ImageSets" / "Segmentation" / "train.txt", "a") as handle:
        handle.write(f"{ID}\n")


def _no_class(data):
    """The image shows nothing of any class: an all-background mask and no image-level label."""
    write_label_png(data / "SegmentationClassAug" / f"{ID}.png", np.zeros((64, 64), dtype=np.uint8))
    labels_path = data / "cls_labels.json"
    labels = json.loads(labels_path.read_text())
    labels[ID] = []
    labels_path.write_text(json.dumps(labels))


def _saliency_size(data):
    Image.fromarray(np.zeros((32, 64), dtype=np.uint8)).save(data / "Sal" / f"{ID}.png")


BAD_DATASETS = {
    "image listed but missing": (lambda d: _unlink(d, f"JPEGImages/{ID}.jpg"), [],
                                 [f"JPEGImages/{ID}.jpg", "image listed but missing"]),
    "truncated JPEG": (_truncate, [], [f"JPEGImages/{ID}.jpg", "cannot read image", "truncated"]),
    "corrupt JPEG": (_garbage, [], [f"JPEGImages/{ID}.jpg", "cannot read image", "not an image file"]),
    "corrupt validation image": (lambda d: (d / "JPEGImages" / "val_00001.jpg").write_bytes(b""), [],
                                 ["JPEGImages/val_00001.jpg", "cannot read image"]),
    "mask of another size": (_mask_size, [], [f"SegmentationClassAug/{ID}.png", "mask is 65x64",
                                              "its image is 64x64"]),
    "mask value outside the classes": (_mask_value, [], [f"SegmentationClassAug/{ID}.png", "mask value 7",
                                                         "outside 0..6 and not 255"]),
    "id listed twice": (_listed_twice, [], ["ImageSets/Segmentation/train.txt", f"id {ID} is listed twice"]),
    "training image without a class, refused": (_no_class, ["--empty-images", "error"],
                                                ["ImageSets/Segmentation/train.txt", f"image {ID}",
                                                 "no foreground class", "empty_images: skip"]),
    "saliency map missing": (lambda d: _unlink(d, f"Sal/{ID}.png"), [], [f"Sal/{ID}.png", "saliency map missing"]),
    "saliency map of another size": (_saliency_size, [], [f"Sal/{ID}.png", "saliency map is 64x32",
                                                          "its image is 64x64"]),
}


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_prepare_refuses_a_bad_dataset(base, tmp_path, capsys, case):
    mutate, extra, fragments = BAD_DATASETS[case]
    data = shutil.copytree(base / "data", tmp_path / "data")
    mutate(data)
    capsys.readouterr()
    assert_refused(capsys, prepare(data, tmp_path / "prep", *extra), "prepare", *fragments)
    assert not (tmp_path / "prep").exists()


def test_a_bad_dataset_fails_without_traceback_from_the_shell(base, tmp_path):
    data = shutil.copytree(base / "data", tmp_path / "data")
    _truncate(data)
    result = subprocess.run([str(BIN / "l2g"), "prepare", "--name", "demo", "--kind", "synthetic", "--root", str(data),
                             "--split", "train=train", "--split", "val=val", "--out", str(tmp_path / "prep" / "m.json")],
                            capture_output=True, text=True)
    lines = error_lines(result.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(lines) == 1 and f"{ID}.jpg: cannot read image" in lines[0], result.stderr
    assert not (tmp_path / "prep").exists()


def test_training_images_without_a_class_are_skipped_and_counted(base, tmp_path, capsys):
    data = shutil.copytree(base / "data", tmp_path / "data")
    _no_class(data)
    assert prepare(data, tmp_path / "prep", "--empty-images", "skip") == 0
    assert "warning: skipping 1 training images without a foreground class" in capsys.readouterr().out
    train = json.loads((tmp_path / "prep" / "manifest.json").read_text())["splits"]["train"]
    assert train["skipped_without_class"] == 1 and train["num_images"] == 3
    assert ID not in (tmp_path / "prep" / "train.txt").read_text().split()


def test_grayscale_cmyk_and_16_bit_images_are_accepted_and_converted(base, tmp_path):
    data = shutil.copytree(base / "data", tmp_path / "data")
    images = data / "JPEGImages"
    rgb = {i: Image.open(images / f"{i}.jpg").convert("RGB") for i in ("train_00000", "train_00001", "train_00002")}
    rgb["train_00000"].convert("L").save(images / "train_00000.jpg", quality=95)
    rgb["train_00001"].convert("CMYK").save(images / "train_00001.jpg", quality=95)
    gray16 = np.asarray(rgb["train_00002"].convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(images / "train_00002.jpg", format="PNG")  # 16 bits, whatever the name says
    assert [Image.open(images / f"{i}.jpg").mode for i in rgb] == ["L", "CMYK", "I;16"]
    assert prepare(data, tmp_path / "prep") == 0
    layout = VOCLayout(data)
    for image_id, original in rgb.items():
        converted = layout.load_image(image_id)
        assert converted.shape == (64, 64, 3) and converted.dtype == np.uint8
        gray = np.asarray(original.convert("L"), dtype=int)
        assert np.abs(converted.astype(int).mean(axis=2) - gray).mean() < 12  # the same picture
    # and a stage reading them gets 8-bit RGB: CAMs at the image size
    assert main(["export-cams", "--manifest", str(tmp_path / "prep" / "manifest.json"), "--model",
                 str(base / "cls" / "model.pt"), "--out", str(tmp_path / "cams"), "--device", "cpu"]) == 0
    for image_id in rgb:
        cams, classes = load_cams(tmp_path / "cams" / f"{image_id}.npz")
        assert cams.shape == (len(classes), 64, 64) and np.isfinite(cams).all()


# --- model files: a checkpoint of another class count or architecture --------------------------


@pytest.fixture(scope="module")
def foreign(base, tmp_path_factory):
    """Model files a user could pass by mistake: one of another class count, a DeepLab file, a
    bare state dict (as released checkpoints come)."""
    folder = tmp_path_factory.mktemp("foreign")
    state = torch.load(base / "cls" / "model.pt", weights_only=True)
    voc = dict(state, class_names=[f"class{i}" for i in range(20)])
    torch.save(voc, folder / "voc_cls.pt")
    torch.save(state["state_dict"], folder / "released.pth")
    assert main(["train-seg", "--manifest", str(base / "prep" / "manifest.json"), "--ground-truth", "--backbone",
                 "small", "--crop-size", "32", "--iterations", "1", "--batch-size", "2", "--lr", "0.01",
                 "--out", str(folder / "seg" / "model.pt")]) == 0
    return folder


CHECKPOINT_CASES = {
    "export-cams, classifier of 20 classes": (
        "export-cams", lambda b, f, out: ["--model", str(f / "voc_cls.pt"), "--out", str(out)],
        ["voc_cls.pt", "trained for 20 classes", "the dataset has 6"]),
    "export-cams, a bare state dict": (
        "export-cams", lambda b, f, out: ["--model", str(f / "released.pth"), "--out", str(out)],
        ["released.pth", "not a model written by l2g train-cls / train-l2g"]),
    "train-l2g, classifier of 20 classes": (
        "train-l2g", lambda b, f, out: ["--init-from", str(f / "voc_cls.pt"), "--out", str(out / "model.pt"),
                                        *L2G_OPTIONS],
        ["voc_cls.pt", "trained for 20 classes"]),
    "train-l2g, a DeepLab file": (
        "train-l2g", lambda b, f, out: ["--init-from", str(f / "seg" / "model.pt"), "--out", str(out / "model.pt"),
                                        *L2G_OPTIONS],
        ["seg/model.pt", "not a model written by l2g train-cls / train-l2g"]),
    "train-cls, init weights of another backbone": (
        "train-cls", lambda b, f, out: ["--backbone", "resnet50", "--init", str(b / "cls" / "model.pt"),
                                        "--out", str(out / "model.pt"), *TINY_CLS_OPTIONS],
        ["cls/model.pt", "parameter conv1.weight", "missing from the checkpoint"]),
    "predict-seg, a classifier": (
        "predict-seg", lambda b, f, out: ["--model", str(b / "cls" / "model.pt"), "--out", str(out)],
        ["cls/model.pt", "not a model written by l2g train-seg"]),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_model_file_of_another_kind_is_refused(base, foreign, tmp_path, capsys, case):
    stage, arguments, fragments = CHECKPOINT_CASES[case]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main([stage, "--manifest", str(base / "prep" / "manifest.json"), *arguments(base, foreign, out),
                 "--device", "cpu"])
    assert_refused(capsys, code, stage, *fragments)
    assert not out.exists()


# --- settings: the config (schema, Snakemake) and the same values given to the commands ---------


BAD_SETTINGS = {
    "negative learning rate": (lambda d: d["train_cls"].update(lr=-0.1),
                               "datasets.demo.train_cls.lr: -0.1 is out of range (must be > 0)"),
    "learning rate of the wrong type": (lambda d: d["train_l2g"].update(lr="fast"),
                                        "datasets.demo.train_l2g.lr: expected number, got 'fast'"),
    "zero crops": (lambda d: d["train_l2g"].update(num_crops=0),
                   "datasets.demo.train_l2g.num_crops: 0 is out of range (must be >= 1)"),
    "fewer crops than corners": (lambda d: d["train_l2g"].update(num_crops=3),
                                 "datasets.demo.train_l2g.num_crops: 3 is fewer than the 4 corner crops"),
    "crop larger than the input": (lambda d: d["train_l2g"].update(crop_size=96),
                                   "datasets.demo.train_l2g.crop_size: 96 is larger than input_size 64"),
    "saliency background without saliency": (
        lambda d: d["train_l2g_no_saliency"].update(background="saliency"),
        "datasets.demo.train_l2g_no_saliency.background: saliency needs use_saliency"),
    "no-saliency crop larger than the input": (
        lambda d: d["train_l2g_no_saliency"].update(crop_size=96),
        "datasets.demo.train_l2g_no_saliency.crop_size: 96 is larger than input_size 64"),
    "zero threads for a rule": (lambda d: d["jobs"]["threads"].update(refine=0),
                                "datasets.demo.jobs.threads.refine: 0 is out of range (must be >= 1)"),
    "band filling without a band": (lambda d: d["refine"].update(fill_band=True, ignore_band=None, threshold=0.3),
                                    "datasets.demo.refine.fill_band: needs an ignore_band and crf: true"),
    "unknown target background": (lambda d: d["train_l2g"].update(background="sky"),
                                  "datasets.demo.train_l2g.background: 'sky' is not one of channel, channel_score, threshold"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_the_key(case):
    mutate, expected = BAD_SETTINGS[case]
    config = copy.deepcopy(tiny_config())
    mutate(config["datasets"]["demo"])
    with pytest.raises(L2GError) as info:
        validate_config(config)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_snakemake_refuses_a_negative_learning_rate_before_running_anything(tmp_path):
    config = tiny_config()
    config["datasets"]["demo"]["train_cls"]["lr"] = -0.1
    result = run_snakemake(tmp_path, "--cores", "1", "results/demo/cls/model.pt", config=config, check=False)
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert lines == ["l2g-pipeline: config error: datasets.demo.train_cls.lr: -0.1 is out of range (must be > 0)"]
    assert not (tmp_path / "results").exists()


BAD_OPTIONS = {
    "negative learning rate": ("train-cls", ["--out", "{out}/model.pt", *TINY_CLS_OPTIONS, "--lr", "-0.1"],
                               ["--lr must be positive, got -0.1"]),
    "zero crops": ("train-l2g", ["--init-from", "{cls}", "--out", "{out}/model.pt", *L2G_OPTIONS, "--num-crops", "0"],
                   ["--num-crops must be at least 1, got 0"]),
    "three corner crops": ("train-l2g", ["--init-from", "{cls}", "--out", "{out}/model.pt", *L2G_OPTIONS,
                                         "--num-crops", "3"],
                           ["--crop-layout corners needs --num-crops 4 or more, got 3"]),
    "crop larger than the input": ("train-l2g", ["--init-from", "{cls}", "--out", "{out}/model.pt", *L2G_OPTIONS,
                                                 "--crop-size", "96"],
                                   ["--crop-size 96", "at most --input-size 64"]),
    "zero images per batch": ("export-cams", ["--model", "{cls}", "--out", "{out}", "--batch-size", "0"],
                              ["--batch-size must be at least 1"]),
    "threshold outside 0..1": ("refine", ["--cams", "{out}", "--out", "{out}", "--threshold", "1.5"],
                               ["--threshold 1.5 is outside [0, 1]"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_a_bad_option_of_a_command_is_one_line(base, tmp_path, capsys, case):
    stage, arguments, fragments = BAD_OPTIONS[case]
    out = tmp_path / "out"
    values = {"out": str(out), "cls": str(base / "cls" / "model.pt")}
    capsys.readouterr()
    code = main([stage, "--manifest", str(base / "prep" / "manifest.json"),
                 *[a.format(**values) for a in arguments]])
    assert_refused(capsys, code, stage, *fragments)
    assert not out.exists()
