"""Shards of an image list: `--shard i/n` takes every n-th id starting at the i-th (1-based).

Strided rather than contiguous, so that shards get similar mixes of image sizes; the union of
the n shards is the whole list, each id exactly once.
"""

from l2g_core.errors import L2GError


def parse_shard(spec):
    """'2/4' -> (2, 4); None -> (1, 1)."""
    if spec is None:
        return 1, 1
    index, sep, count = str(spec).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = 0
    if not sep or not 1 <= index <= count:
        raise L2GError(f"--shard {spec}: expected i/n with 1 <= i <= n, e.g. 1/2")
    return index, count


def shard_ids(ids, index, count):
    return list(ids)[index - 1::count]


def shard_manifest_name(index, count):
    return "manifest.json" if count == 1 else f"manifest-shard-{index}-of-{count}.json"
