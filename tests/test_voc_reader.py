"""The VOC-layout reader (l2g_core.data.layout) and `l2g prepare --kind voc` on a tiny VOC2012 folder."""

import json

import numpy as np
import pytest
from PIL import Image

from l2g_core.cli import main
from l2g_core.data.layout import VOCLayout, labels_from_mask, read_split_list, to_rgb_uint8
from l2g_core.errors import L2GError
from l2g_core.io_utils import write_label_png

H, W = 16, 20
# id -> classes painted into its mask (VOC indices: 1 aeroplane ... 15 person ... 20 tvmonitor).
TRAIN = {"2007_000032": [1, 15], "2007_000039": [20], "2008_000002": [8, 12, 15], "2008_000003": []}
VAL = {"2007_000033": [1], "2007_000042": [19, 7]}


def make_mask(classes):
    """Vertical bands, one per class, on background, with a 255 (ignore) border."""
    mask = np.zeros((H, W), dtype=np.uint8)
    for k, cls in enumerate(classes):
        mask[3:12, 2 + 5 * k:6 + 5 * k] = cls
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 255
    return mask


def make_voc(root):
    rng = np.random.default_rng(0)
    for image_id, classes in {**TRAIN, **VAL}.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_label_png(root / "SegmentationClassAug" / f"{image_id}.png", make_mask(classes))
    (root / "Sal").mkdir()
    for image_id in TRAIN:
        saliency = np.zeros((H, W), dtype=np.uint8)
        saliency[4:12, 4:16] = 255
        saliency[0, 0] = 128
        Image.fromarray(saliency).save(root / "Sal" / f"{image_id}.png")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in TRAIN))
    (lists / "val.txt").write_text("\n".join(VAL) + "\n\n")
    return root


@pytest.fixture()
def voc(tmp_path):
    return make_voc(tmp_path / "VOC2012")


def run_prepare(capsys, voc_root, out_dir, *extra):
    code = main(["prepare", "--name", "voc", "--kind", "voc", "--root", str(voc_root),
                 "--split", "train=train_aug", "--split", "val=val", "--out", str(out_dir / "manifest.json"),
                 "--workers", "2", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr):
    """stderr without progress-bar output (tqdm redraws with carriage returns)."""
    return [line for line in stderr.splitlines() if line.strip() and "%|" not in line]


# --- the reader ---------------------------------------------------------------------------------


def test_read_split_list_both_styles(voc):
    lists = voc / "ImageSets" / "Segmentation"
    assert read_split_list(lists / "train_aug.txt") == list(TRAIN)
    assert read_split_list(lists / "val.txt") == list(VAL)
    layout = VOCLayout(voc)
    assert layout.ids("train_aug") == list(TRAIN)
    assert layout.ids("ImageSets/Segmentation/val.txt") == list(VAL)
    (lists / "empty.txt").write_text("\n  \n")
    with pytest.raises(L2GError, match="empty"):
        read_split_list(lists / "empty.txt")
    with pytest.raises(L2GError, match="not found"):
        read_split_list(lists / "missing.txt")


def test_loaders(voc):
    layout = VOCLayout(voc)
    image = layout.load_image("2007_000032")
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    mask = layout.load_mask("2008_000002")
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    assert np.array_equal(mask, make_mask([8, 12, 15]))
    assert set(np.unique(mask)) == {0, 8, 12, 15, 255}
    assert labels_from_mask(mask, 20) == [8, 12, 15]
    saliency = layout.load_saliency("2007_000032")
    assert saliency.dtype == np.float32 and saliency.shape == (H, W)
    assert saliency.min() == 0.0 and saliency.max() == 1.0
    assert saliency[0, 0] == pytest.approx(128 / 255)
    assert layout.has_saliency()
    assert layout.stored_labels() is None
    with pytest.raises(L2GError, match="does not exist"):
        VOCLayout(voc / "nowhere")


def test_grayscale_and_cmyk_images_become_rgb(voc):
    layout = VOCLayout(voc)
    gray = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (H, 1))
    Image.fromarray(gray, mode="L").save(layout.image_path("gray"), quality=100)
    assert Image.open(layout.image_path("gray")).mode == "L"
    rgb = layout.load_image("gray")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(int) - gray).max() <= 3

    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(layout.image_path("cmyk"), quality=95)
    cmyk = Image.open(layout.image_path("cmyk"))
    assert cmyk.mode == "CMYK"
    for rgb in (to_rgb_uint8(cmyk), layout.load_image("cmyk")):
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(int) - [255, 0, 0]).max() <= 8   # pure red


def test_16_bit_image_becomes_rgb():
    image = Image.new("I;16", (3, 2))
    for x, value in enumerate((0, 32768, 65535)):
        image.putpixel((x, 1), value)
    assert image.mode == "I;16"
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[1, :, 0].tolist() == [0, 128, 255]
    assert rgb[0].max() == 0
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


# --- l2g prepare --kind voc ---------------------------------------------------------------------


def test_prepare_writes_manifest(voc, tmp_path, capsys):
    out = tmp_path / "prep"
    code, stdout, stderr = run_prepare(capsys, voc, out)
    assert code == 0, stderr
    labels = json.loads((out / "labels.json").read_text())
    nonempty_train = [i for i, c in TRAIN.items() if c]
    assert labels == {i: sorted(c) for i, c in {**TRAIN, **VAL}.items() if c or i in VAL}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "voc" and manifest["kind"] == "voc" and manifest["num_classes"] == 20
    assert manifest["has_saliency"] is True
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["num_images"] == 3 and train["skipped_without_class"] == 1
    assert val["num_images"] == 2 and val["skipped_without_class"] == 0
    assert train["has_ground_truth"] is True and val["has_ground_truth"] is True
    assert (out / "train.txt").read_text().split() == nonempty_train
    assert (out / "val.txt").read_text().split() == list(VAL)
    per_class = manifest["train_images_per_class"]
    assert per_class["person"] == 2 and per_class["aeroplane"] == 1 and per_class["tvmonitor"] == 1
    assert per_class["train"] == 0          # only in val
    assert sum(per_class.values()) == sum(len(c) for c in TRAIN.values())


def assert_refused(capsys, voc, tmp_path, *fragments):
    out = tmp_path / "prep"
    code, _, stderr = run_prepare(capsys, voc, out)
    assert code == 1
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("l2g prepare: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (out / "manifest.json").exists()


def test_prepare_refuses_missing_image(voc, tmp_path, capsys):
    (voc / "JPEGImages" / "2007_000042.jpg").unlink()
    assert_refused(capsys, voc, tmp_path, "2007_000042.jpg", "missing")


def test_prepare_refuses_mask_of_wrong_size(voc, tmp_path, capsys):
    write_label_png(voc / "SegmentationClassAug" / "2007_000039.png", np.zeros((H, W + 1), dtype=np.uint8))
    assert_refused(capsys, voc, tmp_path, "2007_000039.png", f"{W + 1}x{H}", f"{W}x{H}")


def test_prepare_refuses_mask_value_out_of_range(voc, tmp_path, capsys):
    mask = make_mask([3])
    mask[5, 5] = 21
    write_label_png(voc / "SegmentationClassAug" / "2007_000033.png", mask)
    assert_refused(capsys, voc, tmp_path, "2007_000033.png", "value 21")


def test_prepare_refuses_a_training_split_without_any_class(voc, tmp_path, capsys):
    # empty_images: skip would leave 0 training images; before, a manifest with none and exit 0
    for image_id in TRAIN:
        write_label_png(voc / "SegmentationClassAug" / f"{image_id}.png", make_mask([]))
    assert_refused(capsys, voc, tmp_path, "train_aug.txt", f"none of its {len(TRAIN)} images has a foreground class",
                   "nothing to train on")


def test_prepare_refuses_a_class_index_the_class_list_lacks(voc, tmp_path, capsys):
    (voc / "cls_labels.json").write_text(json.dumps({"2007_000033": [21]}))
    assert_refused(capsys, voc, tmp_path, "cls_labels.json", "2007_000033", "outside 1..20")


def test_prepare_refuses_id_listed_twice(voc, tmp_path, capsys):
    with open(voc / "ImageSets" / "Segmentation" / "val.txt", "a") as handle:
        handle.write("2007_000033\n")
    assert_refused(capsys, voc, tmp_path, "val.txt", "2007_000033", "twice")


def test_prepare_train_subset_keeps_the_training_images_it_lists(voc, tmp_path, capsys):
    # VOC's train list within train_aug: scored beside the paper's figures; an image that the
    # training split skipped (no class) drops out of the subset as it does out of the training split.
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000039\n2008_000003\n")
    out = tmp_path / "prep"
    code, _, stderr = run_prepare(capsys, voc, out, "--split", "train_subset=train")
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train_subset"]["num_images"] == 1
    assert (out / "train_subset.txt").read_text().split() == ["2007_000039"]


def test_prepare_refuses_train_subset_outside_the_training_split(voc, tmp_path, capsys):
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000039\n2007_000033\n")
    code, _, stderr = run_prepare(capsys, voc, tmp_path / "prep", "--split", "train_subset=train")
    lines = error_lines(stderr)
    assert code == 1 and len(lines) == 1 and "Traceback" not in stderr
    assert "train.txt" in lines[0] and "2007_000033" in lines[0] and "not in the training split" in lines[0]
    assert not (tmp_path / "prep" / "manifest.json").exists()


def test_prepare_refuses_unknown_split_role(voc, tmp_path, capsys):
    code, _, stderr = run_prepare(capsys, voc, tmp_path / "prep", "--split", "test=val")
    assert code == 1 and error_lines(stderr) == [
        "l2g prepare: error: --split 'test=val': unknown role 'test' (one of train, val, train_subset)"]
