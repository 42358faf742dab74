"""The DALI loader's shard checker (`train.data.daligate`, no DALI needed): the reading order of
a rank, answers only once a shard has been checked, and no shard checked far ahead of the
batches (a rank does not read the whole data set to check it)."""

from __future__ import annotations

import time
from pathlib import Path

from sen12ms_common.format.manifest import load_manifest
from train.data.daligate import ShardGate, reading_order


def test_a_rank_meets_the_shards_from_its_first_sample_on_then_wraps():
    assert reading_order(["a", "b", "c"], [2, 2, 2], 0) == [0, 1, 2]
    assert reading_order(["a", "b", "c"], [2, 2, 2], 3) == [1, 2, 0]
    assert reading_order(["a", "b", "c"], [2, 2, 2], 4) == [2, 0, 1]


def test_shards_are_checked_in_order_and_never_far_ahead(sample_shards: Path, tmp_path: Path):
    entries = load_manifest(str(sample_shards)).shards("train")
    assert len(entries) >= 4
    urls = [str(sample_shards / e.name) for e in entries]
    damaged = tmp_path / entries[1].name
    data = bytearray(Path(urls[1]).read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    urls[1] = str(damaged)
    gate = ShardGate(urls, entries, ahead=1)
    try:
        assert gate.problems([urls[0]]) == {}
        time.sleep(0.5)  # time enough to run ahead, were it allowed to
        assert set(gate._done) <= set(urls[:2])
        problems = gate.problems([urls[0], urls[1]])
        assert list(problems) == [urls[1]] and "content does not match the manifest" in problems[urls[1]]
        assert gate.problems(["/elsewhere.tar"])["/elsewhere.tar"].endswith("not in the manifest's split")
        # A batch with a stranger and a shard not checked yet: both answered, after the check.
        mixed = gate.problems(["/elsewhere.tar", urls[3]])
        assert set(mixed) == {"/elsewhere.tar"} and urls[3] in gate._done
    finally:
        gate.close()
