"""Every long command in a log (nohup, SLURM, a pipe, a file): the same interval lines as `train`,
never a carriage-return bar; `--no-progress` accepted by every command and silencing it; the
shard conversion saying what it does after its count reached 100 %."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from segtools import write_seg_checkpoint

from sen12ms_common.progress import Counter, ProgressOptions
from sen12ms_common.words import plural

REPO = Path(__file__).resolve().parents[1]
REAL_PAIR = ("sen12mscr_ROIs1158_spring_s2_101_p30.tif", "sen12mscr_ROIs1158_spring_s1_101_p30.tif")
# `synth: 3/12 triplets (25%), 4.1 triplets/s, ETA 2s`; the last line ends `done in 3s`.
LINE = re.compile(r"^(?P<desc>[\w ]+): (?P<done>[\d.]+(?: [kMGT]?B)?)/(?P<total>[\d.]+(?: [kMGT]?B)?)(?: \w+)? "
                  r"\((?P<pct>\d+)%\), (?:[^,]+, )?[\d.]+ [\w ]*?/s, (?P<end>ETA \S+|done in \S+)$")


def logged(tmp_path: Path, module: str, *args: str) -> str:
    """Run a command with stdout and stderr into one file, as under nohup; its text."""
    log = tmp_path / "log.txt"
    with log.open("wb") as f:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              timeout=600)
    text = log.read_bytes().decode()
    assert proc.returncode == 0, text
    return text


def progress_lines(text: str, desc: str) -> list[re.Match]:
    found = [m for m in map(LINE.match, text.splitlines()) if m and m["desc"] == desc]
    assert found, f"no progress line of {desc!r} in:\n{text}"
    assert found[-1]["end"].startswith("done in ") and found[-1]["pct"] == "100", text
    return found


@pytest.mark.slow
def test_convert_commands_log_interval_lines_not_bars(tmp_path: Path):
    data, shards = tmp_path / "data", tmp_path / "shards"
    fast = ("--progress-interval", "0.001")
    runs = {
        "synth": logged(tmp_path, "convert", "synth", "--out", str(data), "--scenes", "3", "--patches-per-scene", "3",
                        *fast),
        "labels": logged(tmp_path, "convert", "labels", "--data", str(data), "--out", str(tmp_path / "labels"),
                         "--workers", "1", *fast),
        "shards": logged(tmp_path, "convert", "shards", "--data", str(data), "--out", str(shards), "--workers", "1",
                         *fast),
        "verify": logged(tmp_path, "convert", "verify", str(shards), *fast),
        "overview": logged(tmp_path, "convert", "overview", "--shards", str(shards), "--out", str(tmp_path / "ov"),
                           *fast),
    }
    for desc, text in runs.items():
        assert "\r" not in text, f"{desc}: a carriage return in the log"
        lines = progress_lines(text, desc)
        assert len(lines) >= 2, text  # with a 1 ms interval: lines along the way, then the last one
    assert progress_lines(runs["synth"], "synth")[-1].group(0).startswith("synth: 9/9 triplets (100%)")
    assert progress_lines(runs["verify"], "verify")[-1]["total"].endswith("MB")
    # After the count reached 100 %: what the conversion is doing, before its summary.
    text = runs["shards"]
    said = text.index(f"shards: writing the report and the manifest to {shards}...")
    assert text.rindex("shards: 9/9 samples (100%)") < said < text.index("wrote 3 shards")


@pytest.mark.slow
def test_the_default_interval_gives_one_line_per_short_pass(tmp_path: Path):
    text = logged(tmp_path, "convert", "synth", "--out", str(tmp_path / "d"), "--scenes", "1",
                  "--patches-per-scene", "2")
    assert text.splitlines() == [progress_lines(text, "synth")[0].group(0), f"wrote 2 triplets under {tmp_path / 'd'}"]


@pytest.mark.slow
def test_no_progress_silences_every_long_command(tmp_path: Path):
    data = tmp_path / "data"
    quiet = "--no-progress"
    texts = [logged(tmp_path, "convert", "synth", "--out", str(data), "--scenes", "1", "--patches-per-scene", "2",
                    quiet),
             logged(tmp_path, "convert", "labels", "--data", str(data), "--out", str(tmp_path / "l"), quiet),
             logged(tmp_path, "convert", "splits", "--data", str(data), "--out", str(tmp_path / "s"), quiet),
             logged(tmp_path, "convert", "shards", "--data", str(data), "--out", str(tmp_path / "sh"), quiet),
             logged(tmp_path, "convert", "verify", str(tmp_path / "sh"), quiet),
             logged(tmp_path, "convert", "merge-manifest", "--help", quiet)]
    for text in texts:
        assert not [m for m in map(LINE.match, text.splitlines()) if m] and "\r" not in text, text
        assert "writing the report" not in text


@pytest.mark.slow
def test_predict_logs_interval_lines_and_counts_its_pages(real_dir: Path, tmp_path: Path):
    data = tmp_path / "new"
    data.mkdir()
    for name in REAL_PAIR:
        shutil.copy(real_dir / name, data / name)
    ckpt = write_seg_checkpoint(tmp_path / "seg.pth", input_spec="s2hr+s2mr+s1", no_savanna=True)
    text = logged(tmp_path, "train.predict", "--checkpoint", str(ckpt), "--data", str(data), "--out",
                  str(tmp_path / "maps"), "--device", "cpu", "--progress-interval", "0.001")
    assert "\r" not in text
    assert progress_lines(text, "predict")[-1].group(0).startswith("predict: 1/1 patch (100%)")
    assert f"wrote 1 map to {tmp_path / 'maps'} and 1 preview page to " in text
    quiet = logged(tmp_path, "train.predict", "--checkpoint", str(ckpt), "--data", str(data), "--out",
                   str(tmp_path / "maps2"), "--device", "cpu", "--no-progress")
    assert "predict:" not in quiet


def _commands() -> dict[str, click.Command]:
    from convert.cli import cli
    from train.cli.train import main as train_main
    from train.cli.evaluate import main as evaluate_main
    from train.cli.predict import main as predict_main

    found = {f"convert {name}": cmd for name, cmd in cli.commands.items()}
    return {**found, "train": train_main, "train.evaluate": evaluate_main, "train.predict": predict_main}


def test_every_command_accepts_no_progress():
    commands = _commands()
    assert {"convert synth", "convert labels", "convert shards", "convert verify", "convert overview"} <= set(commands)
    for name, command in commands.items():
        flags = [o for p in command.params if isinstance(p, click.Option) for o in p.secondary_opts]
        assert "--no-progress" in flags, name
        assert all(p.help for p in command.params if isinstance(p, click.Option)), name
        with command.make_context(name, ["--no-progress"], resilient_parsing=True) as ctx:
            assert ctx.params.get("progress") is not True, name  # False, or not passed on (no progress shown)


def test_counter_lines_off_a_terminal(tmp_path: Path):
    lines: list[str] = []
    with (tmp_path / "stderr.txt").open("w") as stream:
        opts = ProgressOptions(True, 0.0001)
        assert opts.style(stream=stream) == "lines"
    with Counter(opts, "labels", 3, "patch", write=lines.append) as bar:
        bar.style = "lines"  # pytest's capture is not a terminal either; made explicit
        for _ in bar.iterate(range(3)):
            time.sleep(0.002)  # longer than the interval between two items
    assert [LINE.match(line)["done"] for line in lines] == ["1", "2", "3", "3"]
    assert lines[-1].startswith("labels: 3/3 patches (100%), ") and lines[-1].split(", ")[-1].startswith("done in ")
    off: list[str] = []
    with Counter(ProgressOptions(False), "labels", 3, "patch", write=off.append) as bar:
        bar.update(3)
    assert off == []


def test_bytes_are_counted_with_units():
    lines: list[str] = []
    bar = Counter(ProgressOptions(True, 1e-9), "verify", 2_500_000, "B", scaled=True, write=lines.append)
    bar.style = "lines"
    bar.note("train-000000.tar")
    bar.update(1_250_000)
    assert lines[-1].startswith("verify: 1.2 MB/2.5 MB (50%), train-000000.tar, ")


@pytest.mark.parametrize("word, n, text", [("page", 1, "page"), ("page", 2, "pages"), ("class", 1, "class"),
                                           ("class", 9, "classes"), ("patch", 0, "patches")])
def test_plurals(word: str, n: int, text: str):
    assert plural(word, n) == text
