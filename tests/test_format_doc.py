"""docs/FORMAT.md: its reading snippet runs as written and decodes what our decoder decodes."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cli import cli
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.format.sample import decode_sample, dequantize_s1

FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"


def snippet() -> str:
    text = FORMAT_MD.read_text()
    section = text.split("## Reading a sample without this toolbox", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "FORMAT.md lost its reading snippet"
    return m.group(1)


def test_snippet_is_short_and_imports_nothing_of_ours():
    code = snippet()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 12
    assert not re.search(r"\b(sen12ms_common|convert|train)\b", " ".join(
        line for line in lines if line.startswith(("import", "from"))))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the snippet leaves its tar open
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_snippet_reads_the_first_train_sample_as_our_decoder_does(tmp_path, monkeypatch):
    from convert.sample.sen12ms import synthesize

    synthesize(tmp_path / "data", scenes=3, patches_per_scene=2, seed=5, progress=False)
    r = CliRunner().invoke(cli, ["shards", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                 "--workers", "1", "--no-progress", "--shard-size", "3MB"])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet(), str(FORMAT_MD), "exec"), scope)

    manifest = load_manifest(str(tmp_path / "out"))
    with tarfile.open(tmp_path / "out" / manifest.splits["train"][0].name) as tar:
        infos = tar.getmembers()
        key = infos[0].name.split(".", 1)[0]
        members = {i.name.split(".", 1)[1]: tar.extractfile(i).read() for i in infos if i.name.startswith(key + ".")}
    ours = decode_sample(members, manifest.layout)
    assert scope["sample"]["__key__"] == key
    assert scope["s2"].dtype == np.uint16 and np.array_equal(scope["s2"], ours["s2"])
    assert np.array_equal(scope["s1_db"], dequantize_s1(ours["s1"], np.float64))
    assert scope["label"].dtype == np.float32 and np.array_equal(scope["label"], ours["label"])
    assert scope["meta"] == ours["meta"] and scope["meta"]["season"] in key
