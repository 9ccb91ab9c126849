"""The `l2g` command line: discoverable stages, documented options, clean errors."""

import subprocess

import pytest

from l2g_core.cli import STAGES, main

from conftest import BIN


def test_help_lists_every_stage():
    result = subprocess.run([str(BIN / "l2g"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name, _, _ in STAGES:
        assert name in result.stdout


@pytest.mark.parametrize("stage", [name for name, _, _ in STAGES])
def test_each_stage_documents_its_options(stage, capsys):
    with pytest.raises(SystemExit) as info:
        main([stage, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: l2g {stage}")
    assert out.count("--") >= 2


def test_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["no-such-stage"])
    assert info.value.code == 2


def test_prepare_on_missing_root_is_one_line(tmp_path, capsys):
    code = main(["prepare", "--name", "voc", "--kind", "voc", "--root", str(tmp_path / "nope"),
                 "--split", "train=train_aug", "--out", str(tmp_path / "m" / "manifest.json")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"l2g prepare: error: {tmp_path / 'nope'}: dataset root does not exist"]
    assert not (tmp_path / "m").exists()
