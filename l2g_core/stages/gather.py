"""`l2g gather`: join the shards of a per-image stage into one complete folder.

Reads DIR/manifest-shard-i-of-N.json for i = 1..N, checks that every id of the split was
processed exactly once, with the same settings, and that every listed file is on disk with its
size, then writes DIR/manifest.json (l2g_core.shards.gather). Nothing is written on a problem.
"""

from l2g_core.data.manifest import load_manifest, split_ids
from l2g_core.errors import L2GError
from l2g_core.shards import gather


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--split", required=True, help="split role the shards cover (train or val)")
    parser.add_argument("--folder", required=True, help="the stage's output folder holding the shard manifests")
    parser.add_argument("--shards", type=int, required=True, help="number of shards N")


def run(args):
    if args.shards < 1:
        raise L2GError(f"--shards must be at least 1, got {args.shards}")
    ids = split_ids(load_manifest(args.manifest), args.split)
    merged = gather(args.folder, ids, args.shards)
    print(f"gathered {args.shards} shard(s) of {merged['stage']}: {merged['num_images']} images, "
          f"{len(merged['files'])} files in {args.folder}")
