"""The mount's block caches: sizes parsed as users write them, bounds that are never exceeded, a disk reserve."""

from __future__ import annotations

from pathlib import Path

import pytest

from aml_identity.datastore._fuse_cache import DiskCache, MemoryCache, parse_size

BLOCK = 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        (4096, 4096),
        ("512MiB", 512 * 2**20),
        ("20GiB", 20 * 2**30),
        ("10G", 10 * 10**9),
        ("1.5GB", 1_500_000_000),
        ("64 kib", 65536),
        ("0", 0),
    ],
)
def test_sizes_parse_as_df_prints_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-5", "10 GiBs", "", True, -1, "1e9"])
def test_malformed_sizes_are_refused(bad):
    with pytest.raises(ValueError, match=r"size|negative"):
        parse_size(bad)


def test_the_memory_cache_evicts_the_least_recently_used_blocks_to_stay_in_bound():
    cache = MemoryCache(3 * BLOCK)
    for key in "abc":
        cache.put(key, bytes(BLOCK))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", bytes(BLOCK))
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acd")
    assert cache.bytes_used == 3 * BLOCK
    cache.put("huge", bytes(4 * BLOCK))  # bigger than the whole cache: not kept, nothing evicted
    assert cache.get("huge") is None
    assert cache.bytes_used == 3 * BLOCK


class Disk:
    """A fake disk of ``capacity`` bytes, shared by the cache folder and whatever else the job writes (``other``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.other = 0

    def free(self, path: str) -> int:
        return self.capacity - self.other - _on_disk(Path(path))


def _on_disk(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_the_disk_cache_never_exceeds_its_size_and_evicts_lru(tmp_path):
    cache = DiskCache(str(tmp_path / "c"), 3 * BLOCK + 10, reserve_bytes=0)
    for i in range(6):
        assert cache.put(f"k{i}", bytes([i]) * BLOCK)
        assert _on_disk(tmp_path / "c") <= 3 * BLOCK + 10
        if i == 2:
            assert cache.get("k0", BLOCK) == bytes([0]) * BLOCK  # k0 becomes the most recent
    assert cache.get("k0", BLOCK) is None  # evicted when k4 and k5 needed room, after k1...
    assert cache.get("k5", BLOCK) == bytes([5]) * BLOCK
    assert cache.bytes_used == _on_disk(tmp_path / "c") == 3 * BLOCK
    assert not cache.put("big", bytes(4 * BLOCK))  # bigger than the whole cache


def test_the_disk_cache_keeps_the_reserve_free_even_when_the_job_fills_the_disk(tmp_path):
    disk = Disk(capacity=10 * BLOCK)
    cache = DiskCache(str(tmp_path / "c"), 100 * BLOCK, reserve_bytes=4 * BLOCK, free_space=disk.free)
    for i in range(8):
        cache.put(f"k{i}", bytes(BLOCK))
        assert disk.free(str(tmp_path / "c")) >= 4 * BLOCK
    assert cache.bytes_used == 6 * BLOCK  # the size limit is far away; the reserve is what bounds it
    disk.other = 5 * BLOCK  # the job writes a checkpoint to the same disk
    assert cache.put("after", bytes(BLOCK))  # room is made by evicting, the reserve kept
    assert disk.free(str(tmp_path / "c")) >= 4 * BLOCK
    assert cache.bytes_used == BLOCK
    disk.other = 6 * BLOCK  # no room at all, even with the cache empty: nothing is written
    assert not cache.put("none", bytes(BLOCK))
    assert cache.bytes_used == 0  # everything was given back to the job
    assert disk.free(str(tmp_path / "c")) >= 4 * BLOCK


def test_the_disk_cache_is_reused_by_a_later_mount_and_ignores_torn_files(tmp_path):
    folder = tmp_path / "c"
    first = DiskCache(str(folder), 10 * BLOCK, reserve_bytes=0)
    first.put("kept", b"k" * BLOCK)
    first.put("short", b"s" * BLOCK)
    (folder / "crash.blk.123.tmp").write_bytes(b"torn")  # a write interrupted by a crash
    (folder / "short.blk").write_bytes(b"s" * 10)  # damaged
    second = DiskCache(str(folder), 10 * BLOCK, reserve_bytes=0)
    assert second.get("kept", BLOCK) == b"k" * BLOCK
    assert second.get("short", BLOCK) is None
    assert sorted(p.name for p in folder.iterdir()) == ["kept.blk"]
    assert second.bytes_used == BLOCK
    smaller = DiskCache(str(folder), BLOCK // 2, reserve_bytes=0)  # mounted again with a smaller limit
    assert smaller.bytes_used == 0
    assert list(folder.iterdir()) == []


def test_a_block_still_being_written_is_never_evicted_so_no_orphan_file_can_exceed_the_limit(tmp_path):
    """Regression: a block evicted mid-write used to be renamed into place afterwards, beyond the limit."""
    folder = tmp_path / "c"
    cache = DiskCache(str(folder), 2 * BLOCK, reserve_bytes=0)
    cache.put("old", bytes(BLOCK))
    cache._writing.add("old")  # as if another thread were still writing it
    assert cache.put("a", bytes(BLOCK))
    assert cache.put("b", bytes(BLOCK))  # evicts "a", the oldest block not being written
    assert cache.get("old", BLOCK) is not None
    assert cache.get("a", BLOCK) is None
    cache._writing.add("b")
    assert not cache.put("c", bytes(BLOCK))  # every candidate is being written: refuse rather than overshoot
    assert _on_disk(folder) <= 2 * BLOCK
    cache._writing.clear()
    assert cache.put("c", bytes(BLOCK))
    assert _on_disk(folder) <= 2 * BLOCK
