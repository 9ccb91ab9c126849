"""The conda environment of the rules pins the same versions as pyproject.toml."""

import re
import tomllib
from importlib.metadata import metadata

import yaml

from conftest import REPO


def _pins(requirements):
    pins = {}
    for line in requirements:
        name, sep, version = str(line).partition("==")
        assert sep, f"{line!r} is not pinned with =="
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def test_conda_env_pins_equal_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "envs/l2g.yaml").read_text())
    pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    assert _pins(pip) == _pins(project["dependencies"])
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert project["requires-python"] == ">=3.11" and python == "python=3.11"


def test_the_python_floor_is_the_one_the_pinned_dependencies_allow():
    """pyproject must not promise a Python its pins cannot install on (3.10 allowed here once,
    while snakemake 9 needs 3.11; this suite's tomllib needs 3.11 too)."""
    floor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    needs = {name: metadata(name)["Requires-Python"] for name in ("snakemake", "torch", "numpy")}
    minimum = max(tuple(int(part) for part in re.search(r">=\s*(\d+\.\d+)", spec).group(1).split("."))
                  for spec in needs.values())
    assert floor == ">=" + ".".join(map(str, minimum)), needs


def test_every_rule_declares_the_env():
    for path in (REPO / "workflow/rules").glob("*.smk"):
        text = path.read_text()
        assert text.count("\nrule ") == text.count("        CONDA_ENV\n"), path.name
