"""Config validation: every mistake is one line naming the key, from Python and from Snakemake."""

import copy

import pytest

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
    root = tmp_path / "VOC2012"
    root.mkdir()
    config = tiny_config()
    result = run_snakemake(tmp_path / "work", "-n", "--cores", "1", "results/voc/data/manifest.json",
                           "--config", f"datasets={{voc: {{root: {root}}}}}",
                           config=config)
    assert "rule prepare" in result.stdout and str(root) in result.stdout
