"""Checks that can run before any job run before any job (issue 22, item 4), and `l2g doctor`.

`snakemake -n` on a VOC-layout folder with one thing wrong must refuse in one line naming the
dataset's setting and the fix, exit 1, and write no results/ folder: a recipe reading saliency maps
on a root without Sal/, a root without JPEGImages/ or SegmentationClassAug/, a split list that does
not exist, an init file that is missing, empty or no torch file. `l2g doctor voc` prints its table
on a tiny VOC folder with init files in the released layouts, and names each problem of a broken one.
"""

import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from l2g_core.cli import main
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_label_png
from l2g_core.preflight import sniff_weights

import official_deeplab
from conftest import run_snakemake, tiny_config

TRAIN, VAL = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"], ["2008_000001", "2008_000002"]
PERSON, CAT = 15, 8  # VOC class indices


def write_lists(root):
    """The split lists of the voc section: train_aug, its train part, val."""
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train_aug.txt").write_text("\n".join(TRAIN) + "\n")
    (lists / "train.txt").write_text("\n".join(TRAIN[:2]) + "\n")
    (lists / "val.txt").write_text("\n".join(VAL) + "\n")


def write_voc_folder(root, size=(48, 40)):
    """A tiny VOC-layout folder: images, masks (a rectangle of one class), saliency maps, lists."""
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClassAug", "Sal"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, image_id in enumerate(TRAIN + VAL):
        width, height = size
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((height, width), np.uint8)
        mask[8:30, 10:36] = PERSON if index % 2 else CAT
        write_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "Sal" / f"{image_id}.png")
    write_lists(root)
    return root


def write_torch(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def voc_config(root, **changes):
    """The shipped config with datasets.voc pointed at `root` (and sections updated by `changes`)."""
    config = tiny_config()
    voc = config["datasets"]["voc"]
    voc["root"] = str(root)
    for section, values in changes.items():
        voc[section].update(values)
    return config


# --- the workflow: snakemake -n -------------------------------------------------------------------


@pytest.fixture
def voc_dry(tmp_path):
    """A VOC folder that a dry run accepts (folders and lists; a dry run reads no image) and the
    two init files of the voc section as small torch files, under tmp_path/work."""
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "Sal"):
        (root / folder).mkdir(parents=True)
    write_lists(root)
    work = tmp_path / "work"
    voc = tiny_config()["datasets"]["voc"]
    for section in ("train_cls", "train_seg"):
        write_torch(work / voc[section]["init"], {"weight": torch.zeros(2)})
    return root, work, voc


def dry_run(work, config, target="results/voc/miou.json"):
    return run_snakemake(work, "-n", "--cores", "1", "--", target, config=config, check=False)


def assert_refused(result, work, *fragments):
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (work / "results").exists()
    return lines[0]


def test_a_valid_folder_passes_the_dry_run(voc_dry):
    root, work, _ = voc_dry
    result = dry_run(work, voc_config(root))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rule train_l2g" in result.stdout and not (work / "results").exists()


def _remove(relative):
    return lambda root, work, voc: shutil.rmtree(root / relative)


def _unlink(relative):
    return lambda root, work, voc: (root / relative).unlink()


def _init(section, content):
    return lambda root, work, voc: (work / voc[section]["init"]).write_bytes(content)


def _init_missing(section):
    return lambda root, work, voc: (work / voc[section]["init"]).unlink()


MXNET_HEAD = struct.pack("<QQ", 0x112, 0)  # mx.nd.save: list magic, reserved (l2g_core/mxnet_params.py)

REFUSALS = {
    "saliency recipe without Sal/": (
        _remove("Sal"), {},
        ["datasets.voc: the recipe reads saliency maps (train_l2g.use_saliency: true)", "has no Sal/ folder",
         "add the maps to", "Sal/", "train_l2g: {use_saliency: false} with refine: {background: cam}"]),
    "saliency pseudo labels without Sal/": (
        _remove("Sal"), {"train_l2g": {"use_saliency": False, "background": "channel"},
                         "refine": {"background": "saliency", "threshold": 0.3}},
        ["datasets.voc: the recipe reads saliency maps (refine.background: saliency)",
         "train_l2g: {use_saliency: false} with refine: {background: cam}"]),
    "no JPEGImages/": (_remove("JPEGImages"), {}, ["datasets.voc.root:", "has no JPEGImages/ folder"]),
    "no SegmentationClassAug/": (_remove("SegmentationClassAug"), {},
                                 ["datasets.voc.root:", "has no SegmentationClassAug/ folder"]),
    "missing val list": (_unlink("ImageSets/Segmentation/val.txt"), {},
                         ["datasets.voc.splits.val: split list", "val.txt does not exist", "lists there: train, train_aug"]),
    "missing train_subset list": (_unlink("ImageSets/Segmentation/train.txt"), {},
                                  ["datasets.voc.splits.train_subset:", "train.txt does not exist"]),
    "empty DeepLab init": (_init("train_seg", b""), {},
                           ["datasets.voc.train_seg.init:", "deeplabv1_resnet101-coco.pth: init weights file is empty"]),
    "classifier init that is a web page": (_init("train_cls", b"<!DOCTYPE html><html>Not Found</html>"), {},
                                           ["datasets.voc.train_cls.init:", "not a torch weights file"]),
    "classifier init still in MXNet format": (_init("train_cls", MXNET_HEAD), {},
                                              ["datasets.voc.train_cls.init:", "is an MXNet .params file",
                                               "l2g convert-weights"]),
    "missing DeepLab init": (_init_missing("train_seg"), {},
                             ["datasets.voc.train_seg.init:", "init weights file not found"]),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_the_dry_run_refuses_a_run_that_would_stop_later(voc_dry, case):
    root, work, voc = voc_dry
    breaks, changes, fragments = REFUSALS[case]
    breaks(root, work, voc)
    assert_refused(dry_run(work, voc_config(root, **changes)), work, *fragments)


def test_without_saliency_maps_the_way_out_the_message_names_passes(voc_dry):
    root, work, _ = voc_dry
    shutil.rmtree(root / "Sal")
    config = voc_config(root, train_l2g={"use_saliency": False, "background": "channel"}, refine={"background": "cam"})
    result = dry_run(work, config)
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_saliency_maps_the_pipeline_makes_them_from_the_cams(voc_dry):
    """The third way out (issue 24): saliency: {source: cams} needs no Sal/; L2G reads the made maps."""
    root, work, _ = voc_dry
    shutil.rmtree(root / "Sal")
    result = run_snakemake(work, "-n", "-p", "--cores", "1", "--", "results/voc/l2g/model.pt",
                           config=voc_config(root, saliency={"source": "cams"}), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rule saliency:" in result.stdout and "--saliency-dir results/voc/saliency" in result.stdout


def test_only_a_targeted_dataset_is_checked(voc_dry):
    """A broken voc folder does not stop a run of the demo (as an unset voc root does not)."""
    root, work, _ = voc_dry
    shutil.rmtree(root / "Sal")
    result = dry_run(work, voc_config(root), target="results/demo/cls/model.pt")
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_init_sniff_reads_only_the_first_bytes(tmp_path):
    zipped, legacy = tmp_path / "zip.pt", tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(1)}, zipped)
    torch.save({"w": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "pickle.pth").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    (tmp_path / "w.params").write_bytes(MXNET_HEAD + b"\0" * 1000)
    assert [sniff_weights(p) for p in (zipped, legacy, tmp_path / "pickle.pth")] == ["torch"] * 3
    assert sniff_weights(tmp_path / "w.params") == "mxnet"
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(L2GError, match="empty.pt: init weights file is empty"):
        sniff_weights(tmp_path / "empty.pt")


# --- l2g doctor -------------------------------------------------------------------------------------


def resnet38_state_dict():
    """A ResNet-38 state dict as `l2g convert-weights --arch resnet38` writes it: {name: tensor}
    under the official L2G names, no num_batches_tracked (MXNet has none); small random values."""
    from l2g_core.models import ResNet38

    with torch.device("meta"):  # only the names and shapes of the network
        shapes = {name: value.shape for name, value in ResNet38().state_dict().items()
                  if not name.endswith("num_batches_tracked")}
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) * 0.01 for name, shape in shapes.items()}


@pytest.fixture(scope="module")
def doctor_folder(tmp_path_factory):
    """A tiny VOC folder with real images and the voc section's init files in the released layouts."""
    work = tmp_path_factory.mktemp("doctor")
    write_voc_folder(work / "VOC2012")
    voc = tiny_config()["datasets"]["voc"]
    write_torch(work / voc["train_cls"]["init"], resnet38_state_dict())
    write_torch(work / voc["train_seg"]["init"], official_deeplab.DeepLabV1(n_classes=91).state_dict())
    return work


def run_doctor(work, capsys, monkeypatch, config):
    """`l2g doctor voc` run in `work` (init paths are relative to it) with `config` as its config file."""
    monkeypatch.chdir(work)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code = main(["doctor", "voc", "--configfile", str(work / "config.yaml"), "--workers", "1"])
    out, err = capsys.readouterr()
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()[2:]}
    return code, out, err, rows


def cpu_voc(root):
    """The voc section on this CPU machine: no GPU jobs (the one change from the shipped recipe)."""
    config = voc_config(root)
    config["datasets"]["voc"]["jobs"]["gpu"] = {"default": 0}
    return config


def test_doctor_prints_one_table_and_passes_a_complete_folder(doctor_folder, capsys, monkeypatch):
    code, out, err, rows = run_doctor(doctor_folder, capsys, monkeypatch, cpu_voc(doctor_folder / "VOC2012"))
    assert code == 0, out + err
    assert out.splitlines()[0].split() == ["check", "status", "detail"]
    assert "FAIL" not in out
    assert "4 ids: 4 images, 4 masks, 4 saliency maps (100%), 0 without a class" in rows["split train (train_aug)"]
    assert "2 ids: 2 images, 2 masks" in rows["split val (val)"]
    assert "20 + background: aeroplane, bicycle" in rows["classes"]
    assert "read by train_l2g.use_saliency: true; Sal/ present" in rows["saliency"]
    cls = rows["train_cls.init"]
    assert " ok " in cls and "into resnet38:" in cls and "dropped: none" in cls and "fresh: fc8, f8_3, f8_4, f9" in cls
    seg = rows["train_seg.init"]
    assert " ok " in seg and "dropped: fc;" in seg and "fresh: aspp.c0, aspp.c1, aspp.c2, aspp.c3" in seg
    assert "jobs.gpu asks up to 0 per job" in rows["gpus"]
    assert "GB free" in rows["disk"] and "CAMs" in rows["disk"] and "  ok  " in rows["disk"]
    assert "  ok  " in rows["recipe"] and "the official voc recipe" in rows["recipe"]  # jobs are the machine's


def test_doctor_names_each_problem_of_a_broken_folder(doctor_folder, tmp_path, capsys, monkeypatch):
    work = tmp_path / "broken"
    shutil.copytree(doctor_folder / "VOC2012", work / "VOC2012")
    shutil.rmtree(work / "VOC2012" / "Sal")
    (work / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    voc = tiny_config()["datasets"]["voc"]
    shutil.copytree(doctor_folder / "weights", work / "weights")
    (work / voc["train_seg"]["init"]).write_bytes(b"")
    code, out, err, rows = run_doctor(work, capsys, monkeypatch, cpu_voc(work / "VOC2012"))
    assert code == 1
    failed = {check for check, row in rows.items() if "  FAIL  " in row}
    assert failed == {"saliency", "split val (val)", "train_seg.init"}, out
    assert "train_l2g: {use_saliency: false} with refine: {background: cam}" in rows["saliency"]
    assert "val.txt does not exist" in rows["split val (val)"]
    assert "init weights file is empty" in rows["train_seg.init"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["l2g doctor: error: 3 check(s) failed, the run would stop: saliency, split val (val), "
                     "train_seg.init (see the table above)"]


def test_doctor_names_a_mask_of_another_size_as_prepare_would(doctor_folder, tmp_path, capsys, monkeypatch):
    work = tmp_path / "mask"
    shutil.copytree(doctor_folder, work)
    write_label_png(work / "VOC2012" / "SegmentationClassAug" / f"{VAL[0]}.png", np.zeros((10, 10), np.uint8))
    code, out, err, rows = run_doctor(work, capsys, monkeypatch, cpu_voc(work / "VOC2012"))
    assert code == 1
    assert "  FAIL  " in rows["split val (val)"] and f"1 mask(s) of another size than their image (e.g. {VAL[0]})" in out


def test_doctor_lists_the_settings_that_differ_from_the_official_recipe(doctor_folder, capsys, monkeypatch):
    config = cpu_voc(doctor_folder / "VOC2012")
    config["datasets"]["voc"]["train_l2g"]["kd_weight"] = 5
    code, out, err, rows = run_doctor(doctor_folder, capsys, monkeypatch, config)
    assert code == 0, out + err
    assert "kd_weight 5 (official 10)" in rows["recipe: train_l2g"] and "  warn  " in rows["recipe: train_l2g"]


def test_doctor_refuses_an_unknown_dataset_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    assert main(["doctor", "vox", "--configfile", str(tmp_path / "config.yaml")]) == 1
    out, err = capsys.readouterr()
    assert "datasets.vox: not a dataset" in out and "config" in err
