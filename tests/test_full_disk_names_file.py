"""A disk that fills up when the converter writes its report or manifest: the one-line error
names that file, not the output folder (issue 29, item 11). A real tmpfs whose inodes run out,
in a mount namespace of its own (root only: skipped elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # conversions in subprocesses

REPO = Path(__file__).resolve().parents[1]


def test_a_full_disk_at_the_report_names_the_report(sample_tree: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a tmpfs needs root and unshare(1)")
    mnt, logs = tmp_path / "mnt", tmp_path / "logs"
    mnt.mkdir()
    logs.mkdir()
    out = mnt / "out"
    convert = f"'{sys.executable}' -m convert shards --data '{sample_tree}' --out '{out}' --shard-size 5MB " \
              "--workers 1 --no-progress"
    # The whole conversion, then its report and manifest removed and every free inode but one
    # taken: the resumed run's lock takes that one, the report finds none.
    script = f"""
        mount -t tmpfs -o size=64m tmpfs '{mnt}' || exit 90
        cd '{REPO}'
        {convert} > /dev/null 2>&1 || exit 91
        rm '{out}/manifest.json' '{out}/report.json'
        mount -o remount,nr_inodes=$(( $(find '{mnt}' | wc -l) + 50 )) '{mnt}' || exit 92
        mkdir '{mnt}/fill'; i=0; while touch '{mnt}/fill/'$i 2>/dev/null; do i=$((i+1)); done
        rm '{mnt}/fill/0'
        {convert} --resume > '{logs}/out' 2> '{logs}/err'; echo $? > '{logs}/rc'
        ls -a '{out}' > '{logs}/files'
    """
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs -o size=64m,nr_inodes=2000 tmpfs '{mnt}' && umount '{mnt}' || exit 89\n"
                           + script], capture_output=True, text=True, timeout=600)
    if proc.returncode == 89:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert (logs / "rc").read_text().strip() == "1"
    assert (logs / "err").read_text().splitlines()[-1] == (
        f"Error: {out / 'report.json'}: cannot write (No space left on device); the shards are complete: fix it "
        "and run again with --resume")
    files = (logs / "files").read_text().split()
    assert "report.json" not in files and "manifest.json" not in files
    assert not [f for f in files if ".tmp-" in f]  # nothing half-written left
