"""`python tests/heldconvert.py TRACE shards ...`: `python -m convert shards ...` that appends
`<split> <shard>` to the file TRACE after each committed shard (through the conversion's
`on_commit` callback). The fault tests make TRACE a FIFO (runstops.GatedTrace): the run then waits
at each commit until the test has read it, so a kill or a signal reaches it mid-way however late
the test is scheduled."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import convert.shards.command as command  # noqa: E402
from convert.cli import main  # noqa: E402


def traced(trace: str):
    convert_shards = command.convert_shards

    def run(opts, echo):
        def on_commit(split: str, shard: str) -> None:
            # Opened and closed per line: a FIFO holds the run right here.
            with open(trace, "a", encoding="utf-8") as f:
                f.write(f"{split} {shard}\n")

        return convert_shards(dataclasses.replace(opts, on_commit=on_commit), echo)

    return run


if __name__ == "__main__":
    command.convert_shards = traced(sys.argv[1])
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    main()
