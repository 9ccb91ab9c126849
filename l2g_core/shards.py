"""Per-image output folders, their shards and their manifests.

The per-image stages (CAM export, CRF refinement, DeepLab prediction) write one or two files per
image into a folder. `--shard i/n` makes a stage process every n-th id starting at the i-th
(1-based): strided rather than contiguous, so that shards get similar mixes of image sizes; the
union of the n shards is the whole list, each id exactly once.

A folder (or one shard of it) is complete only when its manifest is written, last:
`manifest.json` for a whole run, `manifest-shard-i-of-n.json` for a shard. A manifest lists the
ids processed, every file with its size and the settings used. `gather` merges the n shard
manifests into `manifest.json` after checking that every id of the split is there exactly once,
that every file is on disk with its size, and that all shards were made with the same settings.
"""

from pathlib import Path

from l2g_core.errors import L2GError
from l2g_core.io_utils import read_json, write_json
from l2g_core.versions import software_versions

MANIFEST = "manifest.json"
NO_CRF_DIR = "no_crf"  # predict-seg: the labels before the CRF, beside the final ones
SHARD_KEYS = ("shard", "ids", "num_images", "files", "versions")  # what may differ between shards


def parse_shard(spec):
    """'2/4' -> (2, 4); None (no --shard: the whole list) -> None."""
    if spec is None:
        return None
    index, sep, count = str(spec).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = 0
    if not sep or not 1 <= index <= count:
        raise L2GError(f"--shard {spec}: expected i/n with 1 <= i <= n, e.g. 1/2")
    return index, count


def shard_ids(ids, shard):
    return list(ids) if shard is None else list(ids)[shard[0] - 1::shard[1]]


def manifest_name(shard):
    return MANIFEST if shard is None else f"manifest-shard-{shard[0]}-of-{shard[1]}.json"


def describe_shard(shard):
    return "all" if shard is None else f"{shard[0]}/{shard[1]}"


def start_output(out, shard):
    """Prepare the folder of a (shard of a) per-image stage; return the manifest path to write last.

    A folder is complete only when its manifest exists, so stale manifests go before any work
    starts: a shard run deletes its own and the whole folder's (whose files it rewrites), a whole
    run also every shard manifest.
    """
    out = Path(out)
    own = out / manifest_name(shard)
    stale = [out / MANIFEST, own]
    if shard is None and out.is_dir():
        stale += sorted(out.glob("manifest-shard-*-of-*.json"))
    for path in stale:
        path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return own


def write_manifest(path, *, stage, shard, ids, files, settings):
    """The manifest of a finished folder or shard: files is {name relative to the folder: bytes}."""
    write_json(path, {"stage": stage, "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
                      "ids": list(ids), "num_images": len(ids), "files": dict(sorted(files.items())),
                      "settings": settings, "versions": software_versions()})


def read_manifest(path):
    return read_json(path, "not found, so that output is missing or incomplete")


def gather(folder, ids, count):
    """Merge the `count` shard manifests of `folder` into its manifest.json; return the merged one.

    L2GError names the first problem: a shard manifest missing, a shard made for another split
    or with other settings, an id missing or processed twice, a listed file absent or of another
    size (a shard rewritten after its manifest).
    """
    folder = Path(folder)
    shards = [read_manifest(folder / manifest_name((i, count))) for i in range(1, count + 1)]
    settings = {k: v for k, v in shards[0].items() if k not in SHARD_KEYS}
    seen, files = {}, {}
    for index, shard in enumerate(shards, start=1):
        name = manifest_name((index, count))
        if shard.get("shard") != f"{index}/{count}":
            raise L2GError(f"{folder / name}: says shard {shard.get('shard')}, expected {index}/{count}")
        other = {k: v for k, v in shard.items() if k not in SHARD_KEYS}
        if other != settings:
            key = next(k for k in sorted(set(other) | set(settings)) if other.get(k) != settings.get(k))
            raise L2GError(f"{folder / name}: made with other settings than shard 1 ({key} differs); "
                           f"rerun the stale shard")
        for image_id in shard["ids"]:
            if image_id in seen:
                raise L2GError(f"{folder / name}: image {image_id} is also in shard {seen[image_id]}/{count}")
            seen[image_id] = index
        files.update(shard["files"])
    missing = [i for i in ids if i not in seen]
    if missing:
        raise L2GError(f"{folder}: image {missing[0]} is in no shard ({len(missing)} of {len(ids)} missing)")
    extra = sorted(set(seen) - set(ids))
    if extra:
        raise L2GError(f"{folder}: image {extra[0]} of the shards is not in the split ({len(extra)} such)")
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise L2GError(f"{path}: missing or not the file its shard manifest lists; rerun that shard")
    merged = {**settings, "shard": None, "shards": count, "ids": list(ids), "num_images": len(ids),
              "files": dict(sorted(files.items())), "versions": shards[0]["versions"]}
    write_json(folder / MANIFEST, merged)
    return merged
