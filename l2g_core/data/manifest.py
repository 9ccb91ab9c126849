"""The prepared dataset a stage reads: results/{dataset}/data/manifest.json (torch-free)."""

from pathlib import Path

from l2g_core.errors import L2GError
from l2g_core.io_utils import read_json


def load_manifest(path):
    return read_json(path, "manifest not found (run the prepare stage first)")


def split_ids(manifest, split):
    if split not in manifest["splits"]:
        raise L2GError(f"manifest of {manifest['name']} has no split {split!r}")
    return Path(manifest["splits"][split]["list"]).read_text().split()
