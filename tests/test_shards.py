"""`gather` (l2g_core.shards): what it refuses when the shards of a per-image folder do not add up
to the split. Shards are written as the stages write them (start_output, files, write_manifest)."""

import pytest

from l2g_core.errors import L2GError
from l2g_core.shards import MANIFEST, gather, shard_ids, start_output, write_manifest

IDS = [f"img{i}" for i in range(5)]


def write_shard(folder, index, count, ids, settings=None):
    shard = (index, count)
    own = start_output(folder, shard)
    files = {}
    for image_id in ids:
        path = folder / f"{image_id}.png"
        path.write_bytes(image_id.encode() * 3)
        files[path.name] = path.stat().st_size
    write_manifest(own, stage="refine", shard=shard, ids=ids, files=files, settings=settings or {"crf": True})


def write_shards(folder, ids_of_shard):
    for index, ids in enumerate(ids_of_shard, start=1):
        write_shard(folder, index, len(ids_of_shard), ids)


def refused(folder, *fragments):
    with pytest.raises(L2GError) as error:
        gather(folder, IDS, 2)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert "\n" not in str(error.value) and not (folder / MANIFEST).exists()


def test_two_strided_shards_gather_into_the_whole_split(tmp_path):
    write_shards(tmp_path, [shard_ids(IDS, (1, 2)), shard_ids(IDS, (2, 2))])
    merged = gather(tmp_path, IDS, 2)
    assert merged["ids"] == IDS and merged["num_images"] == 5 and len(merged["files"]) == 5
    assert (tmp_path / MANIFEST).is_file()


def test_an_image_in_two_shards_is_refused(tmp_path):
    write_shards(tmp_path, [IDS[:3], IDS[2:]])
    refused(tmp_path, "manifest-shard-2-of-2.json", "image img2 is also in shard 1/2")


def test_an_image_outside_the_split_is_refused(tmp_path):
    write_shards(tmp_path, [IDS[:3], IDS[3:] + ["stranger"]])
    refused(tmp_path, "image stranger of the shards is not in the split (1 such)")


def test_an_image_in_no_shard_is_refused(tmp_path):
    write_shards(tmp_path, [IDS[:2], IDS[3:]])
    refused(tmp_path, "image img2 is in no shard (1 of 5 missing)")


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_file_not_as_its_shard_lists_it_is_refused(tmp_path, damage):
    write_shards(tmp_path, [IDS[:3], IDS[3:]])
    path = tmp_path / "img4.png"
    if damage == "truncated":
        path.write_bytes(b"x")
    else:
        path.unlink()
    refused(tmp_path, "img4.png: missing or not the file its shard manifest lists; rerun that shard")
