"""`l2g prepare-coco`: a tiny MS COCO 2014 folder converted to the VOC layout."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from l2g_core.cli import main
from l2g_core.data.classes import COCO_CLASSES
from l2g_core.data.coco import annotations_to_labels, annotations_to_mask, category_index

# The official COCO 2014 category ids, ascending (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 unused).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
PERSON, BICYCLE, BUS, STOP_SIGN, DOG, DINING_TABLE, HAIR_DRIER, TOOTHBRUSH = 1, 2, 6, 13, 18, 67, 89, 90
# Their mask indices, worked out by hand: position in ascending category id + 1.
INDEX = {PERSON: 1, BICYCLE: 2, BUS: 6, STOP_SIGN: 12, DOG: 17, DINING_TABLE: 61, HAIR_DRIER: 79, TOOTHBRUSH: 80}

TRAIN = {n: f"COCO_train2014_{n:012d}" for n in (9, 25, 30, 34, 35)}
VAL = {n: f"COCO_val2014_{n:012d}" for n in (42, 73)}


def box(x0, y0, x1, y1):
    """A polygon (COCO: flat x, y list) around pixels x0..x1-1, y0..y1-1."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE (crowd style): run lengths in column-major order, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def crowd_region():
    region = np.zeros((24, 32), dtype=np.uint8)
    region[14:24, 0:16] = 1
    return region


def toothbrush_region():
    region = np.zeros((16, 20), dtype=np.uint8)
    region[3:8, 4:12] = 1
    return region


def ann(ann_id, image_id, category, segmentation, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
            "iscrowd": crowd, "area": 0.0, "bbox": [0, 0, 1, 1]}


def write_jpeg(path, width, height, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def make_coco_root(root):
    """COCO_ROOT with 5 train and 2 val images; see the expected values in the tests below."""
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in zip(COCO_IDS, COCO_CLASSES)]
    categories.reverse()  # the converter must sort by id, not trust the file's order
    train_images = [(9, 32, 24), (25, 20, 16), (30, 16, 16), (34, 32, 24), (35, 16, 16)]
    train_anns = [
        ann(1, 9, STOP_SIGN, box(16, 4, 22, 10)),            # small, listed before the dog it sits on
        ann(2, 9, PERSON, box(2, 2, 10, 10)),
        ann(3, 9, DOG, box(12, 0, 32, 20)),                  # large
        ann(4, 9, BUS, uncompressed_rle(crowd_region()), crowd=1),
        ann(5, 9, BICYCLE, [[5, 5, 5, 5, 5, 5]]),            # degenerate: no pixel, no label
        ann(6, 25, TOOTHBRUSH, compressed_rle(toothbrush_region())),
        ann(7, 25, DINING_TABLE, box(0, 10, 20, 16)),
        ann(8, 34, PERSON, uncompressed_rle(crowd_region()), crowd=1),   # crowd only: left out
        ann(9, 35, BICYCLE, [[1, 1, 1, 1, 1, 1], [2, 2, 3, 3]]),          # no pixel: left out
    ]
    val_images = [(42, 24, 24), (73, 24, 24)]
    val_anns = [ann(11, 42, PERSON, box(1, 1, 12, 12)), ann(12, 42, HAIR_DRIER, box(14, 14, 22, 22))]
    for split, images, anns, names in (("train", train_images, train_anns, TRAIN),
                                       ("val", val_images, val_anns, VAL)):
        entries = []
        for number, width, height in images:
            file_name = names[number] + ".jpg"
            write_jpeg(root / f"{split}2014" / file_name, width, height, number)
            entries.append({"id": number, "file_name": file_name, "width": width, "height": height})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(
            {"info": {}, "images": entries, "annotations": anns, "categories": categories}))
    return root


def read_mask(out, image_id):
    image = Image.open(out / "SegmentationClassAug" / f"{image_id}.png")
    assert image.mode == "P"
    return np.asarray(image)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def converted(tmp_path, capsys):
    coco = make_coco_root(tmp_path / "coco")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "prepare-coco", coco, out, "--workers", "2")
    assert code == 0, stderr
    return coco, out, stdout


def test_category_index_follows_ascending_ids():
    categories = [{"id": i, "name": n} for i, n in zip(COCO_IDS, COCO_CLASSES)][::-1]
    index = category_index(categories)
    assert sorted(index.values()) == list(range(1, 81))
    for category, expected in INDEX.items():
        assert index[category] == expected
        assert COCO_CLASSES[expected - 1] == categories[::-1][COCO_IDS.index(category)]["name"]
    with pytest.raises(ValueError):
        category_index(categories[1:])


def test_mask_function_resolves_overlap_and_crowd():
    categories = {DOG: 17, STOP_SIGN: 12, BUS: 6}
    crowd = np.zeros((24, 32), dtype=np.uint8)
    crowd[14:24, 0:16] = 1
    anns = [ann(1, 9, STOP_SIGN, box(16, 4, 22, 10)), ann(3, 9, DOG, box(12, 0, 32, 20)),
            ann(4, 9, BUS, uncompressed_rle(crowd), crowd=1)]
    mask = annotations_to_mask(anns, 24, 32, categories)
    assert mask.shape == (24, 32) and mask.dtype == np.uint8
    assert mask[7, 19] == 12        # the small stop sign survives inside the large dog
    assert mask[2, 28] == 17
    assert mask[20, 5] == 255       # crowd only
    assert mask[17, 14] == 17       # crowd covered by a non-crowd instance
    assert mask[22, 28] == 0
    assert set(np.unique(mask)) == {0, 12, 17, 255}
    # Same result whatever the annotation order.
    assert np.array_equal(annotations_to_mask(anns[::-1], 24, 32, categories), mask)
    assert annotations_to_labels(anns, 24, 32, categories) == [12, 17]


def test_masks_at_known_pixels(converted):
    _, out, _ = converted
    mask = read_mask(out, TRAIN[9])
    assert mask.shape == (24, 32)
    assert mask[5, 5] == INDEX[PERSON]           # polygon interior
    assert mask[2, 28] == INDEX[DOG]
    assert mask[7, 19] == INDEX[STOP_SIGN]       # overlap: the smaller instance wins
    assert mask[20, 5] == 255                    # crowd
    assert mask[17, 14] == INDEX[DOG]            # crowd under a non-crowd instance
    assert mask[22, 28] == 0                     # background
    assert mask[12, 5] == 0
    assert set(np.unique(mask)) == {0, INDEX[PERSON], INDEX[STOP_SIGN], INDEX[DOG], 255}

    mask = read_mask(out, TRAIN[25])
    assert mask.shape == (16, 20)
    expected = np.zeros((16, 20), dtype=np.uint8)
    expected[10:16, :] = INDEX[DINING_TABLE]
    expected[toothbrush_region() == 1] = INDEX[TOOTHBRUSH]   # RLE decoded exactly
    assert np.array_equal(mask, expected)

    mask = read_mask(out, VAL[42])
    assert mask[6, 6] == INDEX[PERSON] and mask[18, 18] == INDEX[HAIR_DRIER] and mask[23, 0] == 0


def test_labels_and_split_lists(converted):
    _, out, stdout = converted
    labels = json.loads((out / "cls_labels.json").read_text())
    assert labels == {
        TRAIN[9]: [INDEX[PERSON], INDEX[STOP_SIGN], INDEX[DOG]],   # not bus (crowd), not bicycle (empty)
        TRAIN[25]: [INDEX[DINING_TABLE], INDEX[TOOTHBRUSH]],
        VAL[42]: [INDEX[PERSON], INDEX[HAIR_DRIER]],
    }
    lists = out / "ImageSets" / "Segmentation"
    assert (lists / "train.txt").read_text().split() == [TRAIN[9], TRAIN[25]]
    assert (lists / "val.txt").read_text().split() == [VAL[42]]
    assert "train: 2 images listed, 3 left out" in stdout
    assert "val: 1 images listed, 1 left out" in stdout
    # Images without a non-crowd instance (of at least one pixel) get neither a mask nor a link.
    for image_id in (TRAIN[30], TRAIN[34], TRAIN[35], VAL[73]):
        assert not (out / "SegmentationClassAug" / f"{image_id}.png").exists()
        assert not (out / "JPEGImages" / f"{image_id}.jpg").exists()
    assert not list(out.rglob(".*.tmp"))


def test_images_are_symlinks_to_the_originals(converted):
    coco, out, _ = converted
    for image_id, split in ((TRAIN[9], "train"), (TRAIN[25], "train"), (VAL[42], "val")):
        link = out / "JPEGImages" / f"{image_id}.jpg"
        assert link.is_symlink()
        assert link.resolve() == (coco / f"{split}2014" / f"{image_id}.jpg").resolve()


def test_copy_mode_copies(tmp_path, capsys):
    coco = make_coco_root(tmp_path / "coco")
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "prepare-coco", coco, out, "--workers", "1", "--splits", "val",
                              "--link", "copy")
    assert code == 0, stderr
    copy = out / "JPEGImages" / f"{VAL[42]}.jpg"
    assert copy.is_file() and not copy.is_symlink()
    assert copy.read_bytes() == (coco / "val2014" / f"{VAL[42]}.jpg").read_bytes()
    assert not (out / "ImageSets" / "Segmentation" / "train.txt").exists()
    assert list(json.loads((out / "cls_labels.json").read_text())) == [VAL[42]]


def test_rerun_skips_existing_masks(converted, capsys):
    coco, out, _ = converted
    kept = out / "SegmentationClassAug" / f"{TRAIN[9]}.png"
    redone = out / "SegmentationClassAug" / f"{TRAIN[25]}.png"
    before = read_mask(out, TRAIN[25])
    marker = np.full((24, 32), 7, dtype=np.uint8)
    Image.fromarray(marker).save(kept)       # a rerun must leave an existing mask alone
    redone.unlink()
    labels_before = (out / "cls_labels.json").read_text()
    code, stdout, stderr = run_cli(capsys, "prepare-coco", coco, out, "--workers", "1")
    assert code == 0, stderr
    assert np.array_equal(np.asarray(Image.open(kept)), marker)
    assert np.array_equal(read_mask(out, TRAIN[25]), before)
    assert "1 masks written, 1 already there" in stdout
    assert (out / "cls_labels.json").read_text() == labels_before


def test_prepare_accepts_converted_folder(converted, tmp_path, capsys):
    _, out, _ = converted
    manifest_path = tmp_path / "prep" / "manifest.json"
    code, _, stderr = run_cli(capsys, "prepare", "--name", "coco", "--kind", "coco", "--root", out,
                              "--split", "train=train", "--split", "val=val", "--out", manifest_path)
    assert code == 0, stderr
    manifest = json.loads(manifest_path.read_text())
    assert manifest["num_classes"] == 80 and manifest["class_names"] == list(COCO_CLASSES)
    assert manifest["splits"]["train"]["num_images"] == 2
    assert manifest["splits"]["val"]["num_images"] == 1
    assert manifest["splits"]["train"]["has_ground_truth"] and manifest["splits"]["val"]["has_ground_truth"]
    assert manifest["has_saliency"] is False
    assert manifest["train_images_per_class"]["dog"] == 1
    assert manifest["train_images_per_class"]["bus"] == 0
    labels = json.loads((tmp_path / "prep" / "labels.json").read_text())
    assert labels == json.loads((out / "cls_labels.json").read_text())


def assert_one_line_error(code, stderr, *fragments):
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("l2g prepare-coco: error: ")
    for fragment in fragments:
        assert fragment in stderr


def test_missing_annotation_file(tmp_path, capsys):
    coco = make_coco_root(tmp_path / "coco")
    (coco / "annotations" / "instances_val2014.json").unlink()
    code, _, stderr = run_cli(capsys, "prepare-coco", coco, tmp_path / "out", "--workers", "1")
    assert_one_line_error(code, stderr, "instances_val2014.json", "not found")
    assert not (tmp_path / "out" / "cls_labels.json").exists()


def test_invalid_annotation_json(tmp_path, capsys):
    coco = make_coco_root(tmp_path / "coco")
    (coco / "annotations" / "instances_train2014.json").write_text('{"images": [')
    code, _, stderr = run_cli(capsys, "prepare-coco", coco, tmp_path / "out", "--workers", "1")
    assert_one_line_error(code, stderr, "instances_train2014.json", "not valid JSON")


def test_missing_coco_root(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "prepare-coco", tmp_path / "nowhere", tmp_path / "out")
    assert_one_line_error(code, stderr, "nowhere")


def test_missing_image_is_found_before_any_work(tmp_path, capsys):
    coco = make_coco_root(tmp_path / "coco")
    (coco / "val2014" / f"{VAL[42]}.jpg").unlink()
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "prepare-coco", coco, out, "--workers", "2")
    assert_one_line_error(code, stderr, str(coco / "val2014" / f"{VAL[42]}.jpg"), "not found")
    assert not out.exists()


def test_failure_in_a_worker_leaves_nothing_that_looks_finished(tmp_path, capsys):
    coco = make_coco_root(tmp_path / "coco")
    write_jpeg(coco / "val2014" / f"{VAL[42]}.jpg", 30, 24, 0)   # the json says 24x24
    out = tmp_path / "out"
    code, _, stderr = run_cli(capsys, "prepare-coco", coco, out, "--workers", "2")
    assert code == 1 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("l2g prepare-coco: error: ")
    assert f"{VAL[42]}.jpg: image is 30x24 but instances_val2014.json says 24x24" in errors[0]
    # Train was converted first, but neither a split list nor cls_labels.json was written.
    assert (out / "SegmentationClassAug" / f"{TRAIN[9]}.png").is_file()
    assert not (out / "SegmentationClassAug" / f"{VAL[42]}.png").exists()
    assert not (out / "ImageSets").exists()
    assert not (out / "cls_labels.json").exists()
