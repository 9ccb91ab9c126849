"""The prepared dataset a stage reads: results/{dataset}/data/manifest.json (torch-free)."""

import json
from pathlib import Path

from l2g_core.errors import L2GError


def load_manifest(path):
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: manifest not found (run the prepare stage first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise L2GError(f"{path}: not a manifest (not valid JSON: {error})") from None


def split_ids(manifest, split):
    if split not in manifest["splits"]:
        raise L2GError(f"manifest of {manifest['name']} has no split {split!r}")
    return Path(manifest["splits"][split]["list"]).read_text().split()
