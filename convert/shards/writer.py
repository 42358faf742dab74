"""Writing one split of a conversion: encoded samples appended to shards of about `shard_size`
bytes, each committed in order: the shard renamed into place, its DALI index, its commit record."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from typing import Callable

from convert.shards.encode import Encoded, Failed, tar_bytes
from convert.shards.outfolder import PARTS, ShardRecord, SplitEnd, end_name, part_shard_name, record_name, write_json
from convert.shards.plan import Part
from convert.shards.stats import BandMoments, merge
from sen12ms_common.format.manifest import Rejection, index_name
from sen12ms_common.format.sample import TarShardWriter, dali_index
from sen12ms_common.storage import files as storage


class SplitWriter:
    """Appends encoded samples of one split to shards; `owner` names this run's temporaries (its
    lock token); `on_commit(split, shard name)` is called after each committed shard."""

    def __init__(self, out: str, split: str, first_shard: int, start: int, fingerprint: str, shard_size: int,
                 part: Part | None = None, owner: str | None = None,
                 on_commit: Callable[[str, str], None] | None = None) -> None:
        self.out, self.split, self.fingerprint, self.shard_size = out, split, fingerprint, shard_size
        self.part, self.owner, self.on_commit = part, owner, on_commit
        self.shard = first_shard
        self.start = start  # first plan position of the shard being written
        self.pos = start  # next plan position
        self.records: list[ShardRecord] = []
        self._stack: ExitStack | None = None
        self._writer: TarShardWriter | None = None
        self._placed: list[str] = []  # files of the shard being committed, already in place
        self._bytes = 0
        self._stats: BandMoments = {}
        self._rejected: list[Rejection] = []
        self._warnings: list[Rejection] = []

    @property
    def current_url(self) -> str:
        return storage.join(self.out, part_shard_name(self.split, self.shard, self.part))

    def add(self, result: Encoded | Failed) -> None:
        if isinstance(result, Failed):
            self._rejected.append(Rejection(result.key, result.reason, result.path, self.split))
        else:
            size = tar_bytes(result.members)
            # 1024: the two zero blocks that end a tar.
            if self._writer is not None and self._bytes + size + 1024 > self.shard_size:
                self.commit_shard()
            if self._writer is None:
                self._stack = ExitStack()
                # Its exit is registered before its temporary exists: a Ctrl-C that lands between
                # the two (enter_context leaves that gap) would leave the temporary behind.
                shard = storage.atomic_open(self.current_url, owner=self.owner)
                self._stack.push(shard)
                self._writer = TarShardWriter(shard.__enter__())
                self._bytes = 0
            self._writer.add_sample(result.key, result.members)
            self._bytes += size
            merge(self._stats, result.stats)
            self._warnings += [Rejection(result.key, msg, path, self.split) for path, msg in result.warnings]
        self.pos += 1

    def commit_shard(self) -> None:
        """Close the shard being written: rename it into place, then write its index and, last,
        its commit record."""
        assert self._writer is not None and self._stack is not None
        name = part_shard_name(self.split, self.shard, self.part)
        shard_stats = self._writer.close()
        self._placed = [self.current_url]
        self._stack.close()  # renames the finished tar into place
        self._stack = self._writer = None
        self._placed.append(storage.join(self.out, index_name(name)))
        storage.write_text(self._placed[-1], dali_index(shard_stats.index), self.owner)
        # The position after the shard's last sample: the rejections before it belong to this shard.
        end = self.pos
        rec = ShardRecord(self.fingerprint, self.split, self.shard, name, self.start, end, shard_stats.samples,
                          shard_stats.bytes, shard_stats.sha256, shard_stats.xxh3_128,
                          {k: list(v) for k, v in self._stats.items()},
                          [asdict(r) for r in self._rejected], [asdict(w) for w in self._warnings])
        write_json(storage.join(self.out, PARTS, record_name(self.split, self.shard, self.part)), asdict(rec),
                   self.owner)
        self._placed = []
        self.records.append(rec)
        if self.on_commit is not None:
            self.on_commit(self.split, name)
        self.shard += 1
        self.start = end
        self._stats, self._rejected, self._warnings = {}, [], []

    def finish(self) -> SplitEnd:
        if self._writer is not None:
            self.commit_shard()
        end = SplitEnd(self.fingerprint, self.split, self.shard, self.start, self.pos,
                       [asdict(r) for r in self._rejected], [asdict(w) for w in self._warnings])
        write_json(storage.join(self.out, PARTS, end_name(self.split, self.part)), asdict(end), self.owner)
        return end

    def abort(self, exc: BaseException) -> bool:
        """Drop the shard being written: its temporary goes, and a shard already renamed into place
        whose index or record failed is removed. False where that removal failed too."""
        if self._stack is not None:
            stack, self._stack, self._writer = self._stack, None, None
            stack.__exit__(type(exc), exc, exc.__traceback__)
        placed, self._placed = self._placed, []
        try:
            for url in placed:
                storage.remove(url)
        except OSError:
            return False
        return True
