"""Config validation: every mistake is one line naming the key, from Python and from Snakemake."""

import copy
import re

import pytest
import yaml

from l2g_core.config import load_yaml, require_root, validate_config
from l2g_core.errors import L2GError

from conftest import REPO, run_snakemake, tiny_config


@pytest.fixture
def config():
    return load_yaml(REPO / "config" / "config.yaml")


def test_shipped_config_is_valid(config):
    validate_config(config)
    assert set(config["datasets"]) >= {"demo", "voc", "coco"}


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["datasets"]["demo"].update(sise=1), "datasets.demo: unknown key 'sise'"),
    (lambda c: c.update(foo=1), "(top level): unknown key 'foo'"),
    (lambda c: c["datasets"]["demo"]["synthetic"].update(size="big"),
     "datasets.demo.synthetic.size: expected integer, got 'big'"),
    (lambda c: c["datasets"]["demo"]["synthetic"].update(train=0),
     "datasets.demo.synthetic.train: 0 is out of range (must be >= 1)"),
    (lambda c: c["datasets"]["voc"].update(kind="pascal"), "datasets.voc.kind: 'pascal' is not one of"),
    (lambda c: c["datasets"]["voc"].update(root="/no/such/folder"),
     "datasets.voc.root: folder /no/such/folder does not exist"),
    (lambda c: c["datasets"]["voc"].pop("splits"), "datasets.voc: missing key 'splits'"),
    (lambda c: c["datasets"]["demo"].update(root="/tmp"), "datasets.demo.root: a synthetic dataset"),
    # the official global batch of 3 cannot be split over 2 DDP processes
    (lambda c: c["datasets"]["voc"]["jobs"]["gpu"].update(train_control=2),
     "datasets.voc.train_l2g.batch_size: 3 (the global batch) does not split over the 2 GPUs of "
     "jobs.gpu.train_control; give a multiple of 2"),
])
def test_mistakes_give_one_line_naming_the_key(config, mutate, expected):
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(L2GError) as info:
        validate_config(broken)
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


# keys of voc's sections that coco inherits and its settings never read: a warped input has no
# short side or crop layout (resize: warp), a poly schedule no steps (schedule: poly)
UNREAD_UNDER_COCO = {"train_cls": {"short_side", "crop_axes"},
                     "train_l2g": {"short_side", "crop_axes", "step_epochs", "gamma"}}


def test_coco_is_the_voc_recipe_plus_its_differences_and_merges_to_its_full_settings(config):
    raw = config["datasets"]["coco"]
    assert raw["recipe"] == "voc" and "export_cams" not in raw and len(raw["train_l2g"]) < 20
    merged = validate_config(config)["coco"]
    full = load_yaml(REPO / "tests" / "data" / "coco_section_2026-12-01.yaml")
    # expect: coco's own published figure; saliency (issue 24, after the snapshot): the official ROOT/Sal maps
    assert set(merged) == set(full) | {"recipe", "expect", "saliency"}
    assert merged["saliency"] == {"source": "folder"}
    assert merged["jobs"]["gpu"].pop("saliency") == 1  # the detector source's GPU, also after the snapshot
    assert merged["expect"] == raw["expect"]  # never voc's
    for section, settings in full.items():
        if not isinstance(settings, dict):
            assert merged[section] == settings, section
            continue
        extra = set(merged[section]) - set(settings)
        assert extra == UNREAD_UNDER_COCO.get(section, set()), section
        assert {key: merged[section][key] for key in settings} == settings, section


def test_a_recipe_gives_the_method_not_the_data_and_mistakes_name_where_they_were_written(config):
    config["datasets"]["mine"] = {"recipe": "coco", "kind": "custom", "classes": ["a", "b", "c"],
                                  "splits": {"train": "train", "val": "val"}, "train_l2g": {"kd_weight": 5}}
    mine = validate_config(config)["mine"]
    assert mine["train_l2g"]["kd_weight"] == 5 and mine["train_l2g"]["lr"] == 0.1  # coco's, over voc's
    assert mine["train_seg"]["iterations"] == 50000 and mine["export_cams"]["scales"] == [0.5, 1.0, 1.5, 2.0]
    assert mine["kind"] == "custom" and "root" not in mine and "train_subset" not in mine["splits"]
    config["datasets"]["mine"]["train_l2g"]["kd_weight"] = "big"
    with pytest.raises(L2GError, match=r"^datasets\.mine\.train_l2g\.kd_weight: expected number, got 'big'$"):
        validate_config(config)
    config["datasets"]["mine"]["train_l2g"]["kd_weight"] = 5
    config["datasets"]["voc"]["train_seg"]["lr"] = "x"  # in the recipe's recipe: named there
    with pytest.raises(L2GError, match=r"^datasets\.voc\.train_seg\.lr: expected number, got 'x'$"):
        validate_config(config)
    config["datasets"]["voc"]["train_seg"]["lr"] = 0.00025
    config["datasets"] = dict(reversed(config["datasets"].items()))  # Snakemake writes keys sorted: coco first
    config["datasets"]["voc"]["train_seg"]["init"] = None  # a check after the schema's: named where written too
    with pytest.raises(L2GError, match=r"^datasets\.voc\.train_seg\.init: null would train"):
        validate_config(config)
    config["datasets"]["voc"]["train_seg"]["init"] = "scratch"
    for recipe, expected in (("vocc", "datasets.mine.recipe: 'vocc' is not a dataset of this config"),
                             ("mine", "datasets.mine.recipe: a cycle (mine -> mine)")):
        config["datasets"]["mine"]["recipe"] = recipe
        with pytest.raises(L2GError, match=re.escape(expected)):
            validate_config(config)


@pytest.mark.parametrize("change, expected", [
    ({"classes": None}, "datasets.mine: kind custom needs its class names: set classes: [...] or write them"),
    ({"classes": ["a", "b", "a"]}, "datasets.mine.classes: 'a' is listed twice"),
    ({"kind": "voc"}, "datasets.mine.classes: only a dataset of kind custom names its classes"),
])
def test_a_custom_dataset_names_its_classes_once(config, tmp_path, change, expected):
    mine = {"recipe": "demo", "kind": "custom", "root": str(tmp_path), "classes": ["a", "b"],
            "splits": {"train": "train", "val": "val"}, **change}
    config["datasets"]["mine"] = {key: value for key, value in mine.items() if value is not None}
    with pytest.raises(L2GError, match=re.escape(expected)):
        validate_config(config)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    if change == {"classes": None}:  # classes.txt in the root is the other way
        assert validate_config(config)["mine"]["kind"] == "custom"


def test_unset_root_says_how_to_set_it(config):
    with pytest.raises(L2GError, match=r"datasets.voc.root is not set; point it at your copy"):
        require_root(config, "voc")


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("datasets:\n  demo: [unclosed\n")
    with pytest.raises(L2GError, match=r"bad.yaml: not valid YAML \(line 3\)"):
        load_yaml(path)


def _stderr_lines(result):
    return [line for line in result.stderr.splitlines() if "config error" in line]


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["datasets"]["demo"].update(sise=1), "datasets.demo: unknown key 'sise'"),
    (lambda c: c["datasets"]["demo"]["synthetic"].update(size="big"), "expected integer, got 'big'"),
    (lambda c: c["datasets"]["voc"].update(root="/no/such/folder"), "folder /no/such/folder does not exist"),
])
def test_snakemake_refuses_a_bad_config_in_one_line(tmp_path, mutate, expected):
    config = tiny_config()
    mutate(config)
    result = run_snakemake(tmp_path, "-n", "--cores", "1", "results/demo/data/manifest.json",
                           config=config, check=False)
    assert result.returncode == 1
    lines = _stderr_lines(result)
    assert len(lines) == 1 and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_snakemake_names_an_unset_root_when_the_dataset_is_targeted(tmp_path):
    result = run_snakemake(tmp_path, "-n", "--cores", "1", "results/voc/data/manifest.json", check=False)
    assert result.returncode == 1
    lines = _stderr_lines(result)
    assert len(lines) == 1 and "datasets.voc.root is not set" in lines[0]


def test_one_setting_points_the_pipeline_at_a_voc_copy(tmp_path):
    root = tmp_path / "VOC2012"  # a VOC layout: an empty folder is refused (tests/test_preflight.py)
    for folder in ("JPEGImages", "SegmentationClassAug", "Sal", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for split in ("train_aug", "train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("2007_000001\n")
    config = tiny_config()
    result = run_snakemake(tmp_path / "work", "-n", "--cores", "1", "results/voc/data/manifest.json",
                           "--config", f"datasets={{voc: {{root: {root}}}}}",
                           config=config)
    assert "rule prepare" in result.stdout and str(root) in result.stdout


def test_the_stage_registry_names_every_rule_the_workflow_and_the_schema_have(tmp_path):
    from l2g_core.pipeline import RULES

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert list(schema["$defs"]["per_rule"]["properties"]) == ["default", *RULES]
    listed = run_snakemake(tmp_path, "--list-rules").stdout.split()
    assert sorted(listed) == sorted([*RULES, "score_supervised", "all"])
