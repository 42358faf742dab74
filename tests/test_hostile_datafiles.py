"""Hostile label and split files: a pickle that would crash numpy, memory bombs, deep nesting,
huge values. Each is refused with one line naming the file, a non-zero status and no traceback;
the commands run in a subprocess under an address-space limit, so a bomb fails the test instead
of the machine. Valid files of every pickle protocol, numpy 1.x and 2.x, Python 2 and 3 still
load, and a fuzz test holds the readers to "our error or a correct result"."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import resource
import struct
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convert.datafiles.labels import LABEL_JSON, compat_pickle, label_file_contents
from sen12ms_common.datafiles import safepickle
from sen12ms_common.datafiles.limits import MAX_FILE_BYTES, MAX_PICKLE_DATA_BYTES, MAX_PICKLE_OBJECTS, MAX_TREE_VALUES
from sen12ms_common.datafiles.read import load_labels, parse_labels, parse_split_list, read_excluded, read_split_list
from sen12ms_common.errors import InputError
from sen12ms_common.vocab.patches import parse_patch

REPO = Path(__file__).resolve().parents[1]
AS_LIMIT = 3 << 30  # enough for the interpreter, numpy and rasterio; not for a bomb
NAME = "ROIs1158_spring_s2_1_p30.tif"
NOT_NUMERIC = "is not a numeric type (float16/32/64 or an integer type)"


# --- pickles made opcode by opcode ------------------------------------------------------------------

def text(value: str) -> bytes:
    """BINUNICODE."""
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + f"{module}\n{name}\n".encode()


def dtype_ops(code: str, order: str = "|", flags: int = 0) -> bytes:
    """numpy.dtype(code, False, True) and its BUILD, as numpy pickles a dtype."""
    return (glob("numpy", "dtype") + text(code) + b"\x89\x88\x87R" + b"(K\x03" + text(order) + b"NNN"
            + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + b"K" + bytes([flags]) + b"tb")


def array_ops(dtype: bytes, raw: bytes, core: str = "numpy.core", count: int | None = None) -> bytes:
    """_reconstruct(ndarray, (0,), b'b') + BUILD (1, (count,), dtype, False, raw); count: 8-byte items of raw."""
    count = len(raw) // 8 if count is None else count
    return (glob(f"{core}.multiarray", "_reconstruct") + glob("numpy", "ndarray") + b"K\x00\x85C\x01b\x87R"
            + b"(K\x01K" + bytes([count]) + b"\x85" + dtype + b"\x89C" + bytes([len(raw)]) + raw + b"tb")


def label_pickle(value_ops: bytes) -> bytes:
    """{NAME: value}, protocol 3."""
    return b"\x80\x03}" + text(NAME) + value_ops + b"s."


def object_array_pickles() -> dict[str, bytes]:
    """Arrays whose dtype holds Python objects: numpy would read the 8 bytes 'AAAAAAAA' as a pointer."""
    pointer = b"A" * 8
    return {
        "numpy 1.x _reconstruct": label_pickle(array_ops(dtype_ops("O8"), pointer)),
        "numpy 2.x _reconstruct": label_pickle(array_ops(dtype_ops("O8"), pointer, core="numpy._core")),
        "_frombuffer": label_pickle(glob("numpy._core.numeric", "_frombuffer") + b"(C\x08" + pointer
                                    + dtype_ops("O8") + b"K\x01\x85X\x01\x00\x00\x00CtR"),
        "scalar": label_pickle(glob("numpy.core.multiarray", "scalar") + dtype_ops("O8") + b"C\x08" + pointer
                               + b"\x86R"),
    }


def memo_doubling(levels: int) -> bytes:
    """A list holding the previous level twice, `levels` deep: 2**levels numbers in a few hundred bytes."""
    ops = b"]K\x00aq\x000"
    for i in range(1, levels + 1):
        ops += b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i]) + b"0"
    return ops + b"h" + bytes([levels])


def memo_fanout(levels: int, width: int) -> bytes:
    """Each level a list holding the previous one `width` times (shallow, but width**levels values)."""
    ops = b"]K\x00aq\x000"
    for i in range(1, levels + 1):
        ops += b"](" + (b"h" + bytes([i - 1])) * width + b"eq" + bytes([i]) + b"0"
    return ops + b"h" + bytes([levels])


def py2_label_pickle(labels: dict[str, np.ndarray]) -> bytes:
    """A dict of name -> float64 array as Python 2 / numpy 1.x pickle it at protocol 2 (str is
    SHORT_BINSTRING / BINSTRING; the array data a str)."""
    def string(raw: bytes) -> bytes:
        return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw

    out = b"\x80\x02}q\x00("
    for name, vec in labels.items():
        out += (string(name.encode()) + glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray")
                + b"K\x00\x85" + string(b"b") + b"\x87R" + b"(K\x01K" + bytes([vec.size]) + b"\x85"
                + glob("numpy", "dtype") + string(b"f8") + b"K\x00K\x01\x87R" + b"(K\x03" + string(b"<")
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb" + b"\x89" + string(vec.astype("<f8").tobytes())
                + b"tb")
    return out + b"u."


def py2_label_pickle_protocol0(labels: dict[str, np.ndarray]) -> bytes:
    """The same at protocol 0: every argument a text line, str written as its repr."""
    out, memo = b"(dp0\n", 1
    for name, vec in labels.items():
        raw = vec.astype("<f8").tobytes()
        out += (b"S'" + name.encode() + b"'\n" + glob("numpy.core.multiarray", "_reconstruct")
                + b"(" + glob("numpy", "ndarray") + b"(I0\ntS'b'\ntR"
                + b"(I1\n(I" + str(vec.size).encode() + b"\ntp" + str(memo).encode() + b"\n"
                + glob("numpy", "dtype") + b"(S'f8'\nI0\nI1\ntR(I3\nS'<'\nNNNI-1\nI-1\nI0\ntb"
                + b"I00\nS" + repr(raw)[1:].encode() + b"\ntbs")
        memo += 1
    return out + b"."


def py2_list_pickle_protocol0(names: list[str]) -> bytes:
    """A list of str as Python 2 pickles it at protocol 0."""
    out = b"(lp0\n"
    for i, name in enumerate(names, 1):
        out += b"S'" + name.encode() + b"'\np" + str(i).encode() + b"\na"
    return out + b"."


def as_numpy1(data: bytes) -> bytes:
    """The pickle numpy 1.x writes: numpy.core instead of numpy._core (frames dropped, as lengths change)."""
    out, ops = b"", list(pickletools.genops(data))
    for (op, arg, pos), nxt in zip(ops, [p for _, _, p in ops[1:]] + [len(data)]):
        if op.name == "FRAME":
            continue
        if op.name == "SHORT_BINUNICODE" and arg.startswith("numpy._core"):
            raw = ("numpy.core" + arg[len("numpy._core"):]).encode()
            out += b"\x8c" + bytes([len(raw)]) + raw
        else:
            out += data[pos:nxt].replace(b"numpy._core.", b"numpy.core.")
    return out


def labels_of(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, 17)) * (rng.random((n, 17)) < 0.3)
    probs[:, 4] += 0.01
    probs /= probs.sum(axis=1, keepdims=True)
    return {f"ROIs1158_spring_s2_{i // 100 + 1}_p{i % 100}.tif": probs[i] for i in range(n)}


# --- running the commands ---------------------------------------------------------------------------

def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def convert(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m convert ARGS` under the address-space limit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, preexec_fn=_limit_memory, timeout=timeout)


def assert_refused(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 1 (not a signal: a negative status), exactly one error line, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr == f"Error: {message}\n"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from convert.sample.sen12ms import synthesize

    root = tmp_path_factory.mktemp("hostile_datafiles") / "data"
    synthesize(root, scenes=1, patches_per_scene=2, seed=5, progress=False)
    return root


def shards_with_labels(tree: Path, folder: Path, content: bytes, name: str = "labels.pkl"):
    """`convert shards --labels` of a label file holding `content`, in `folder`; nothing is written."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    out = folder / "out"
    proc = convert("shards", "--data", str(tree), "--out", str(out), "--labels", str(path), "--no-progress",
                   "--workers", "1")
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    return proc, path


def shards_with_split(tree: Path, folder: Path, content: bytes, name: str = "train_list.pkl"):
    """`convert shards --splits` of a split folder whose `name` holds `content`."""
    splits = folder / "splits"
    splits.mkdir(parents=True)
    (splits / name).write_bytes(content)
    (splits / "test_list.txt").write_text("ROIs1158_spring_s2_1_p31.tif\n")
    proc = convert("shards", "--data", str(tree), "--out", str(folder / "out"), "--splits", str(splits),
                   "--no-progress", "--workers", "1")
    assert not (folder / "out").exists() or not [p for p in (folder / "out").rglob("*") if p.is_file()]
    return proc, splits / name


# --- 1. a pickle that would crash numpy -------------------------------------------------------------

@pytest.mark.parametrize("kind", list(object_array_pickles()))
def test_an_object_dtype_label_pickle_is_refused_instead_of_crashing(tree, tmp_path, kind):
    proc, path = shards_with_labels(tree, tmp_path, object_array_pickles()[kind])
    assert_refused(proc, f"{path}: refused to load: numpy dtype 'O8' {NOT_NUMERIC}")


@pytest.mark.slow
def test_an_object_dtype_split_pickle_is_refused_instead_of_crashing(tree, tmp_path):
    content = b"\x80\x03]" + b"(" + text(NAME) + array_ops(dtype_ops("O8"), b"A" * 8) + b"e."
    proc, path = shards_with_split(tree, tmp_path, content)
    assert_refused(proc, f"{path}: refused to load: numpy dtype 'O8' {NOT_NUMERIC}")


@pytest.mark.parametrize("ops, reason", [
    (array_ops(dtype_ops("V8"), b"A" * 8), f"numpy dtype 'V8' {NOT_NUMERIC}"),
    (array_ops(dtype_ops("f8", "|", 63), b"A" * 8), "the state of numpy dtype 'f8' is not that of a numeric type"),
    (array_ops(dtype_ops("f8", "<"), b"A" * 7, count=1), "array data holds 7 bytes, shape (1,) of <f8 needs 8"),
    (glob("numpy", "ndarray") + b"K\x02J\x00\x00\x00\x40\x86" + dtype_ops("f8", "<") + b"\x86R",
     "array of shape (2, 1073741824) holds more than 4096 values"),
])
def test_numpy_patterns_other_than_numerics_are_refused(tmp_path, ops, reason):
    path = tmp_path / "labels.pkl"
    path.write_bytes(label_pickle(ops))
    with pytest.raises(InputError) as err:
        load_labels(str(path))
    assert str(err.value) == f"{path}: refused to load: {reason}"


# --- 2. memory bombs, huge values, deep nesting -----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("content, reason", [
    # bytes(2**33): 8 GiB from 63 bytes
    (label_pickle(glob("builtins", "bytes") + b"\x8a\x05\x00\x00\x00\x00\x02\x85R"),
     "refused to load: bytes is called with arguments (only bytes() is read)"),
    # 2**28 numbers through shared memo references
    (label_pickle(memo_doubling(28)), "refused to load: containers nested deeper than 8 levels"),
    # shallow, but 64**5 values counted as a tree
    (label_pickle(memo_fanout(5, 64)),
     f"refused to load: the data holds more than {MAX_TREE_VALUES} values (a shared value counts each time)"),
    # 100,000 nested lists, and tuples
    (label_pickle(b"]" * 100_000 + b"a" * 99_999), "refused to load: containers nested deeper than 8 levels"),
    (label_pickle(b"K\x00" + b"\x85" * 100_000), "refused to load: containers nested deeper than 8 levels"),
    # a 20 MB string
    (label_pickle(b"X" + struct.pack("<I", 20_000_000) + b"a" * 20_000_000),
     "refused to load: a string of 20000000 bytes, more than 4096"),
    # two million memo references on the stack
    (label_pickle(b"N\x94" + b"h\x00" * 2_000_000), "refused to load: more than 1000000 values on the pickle stack"),
], ids=["bytes", "memo-doubling", "memo-fanout", "deep-lists", "deep-tuples", "long-string", "stack"])
def test_pickle_bombs_are_refused_before_they_allocate(tree, tmp_path, content, reason):
    proc, path = shards_with_labels(tree, tmp_path, content)
    assert_refused(proc, f"{path}: {reason}")


@pytest.mark.slow
def test_a_pickle_using_every_budget_to_the_full_stays_within_the_memory_limit(tree, tmp_path):
    # 256 MiB of bytes made from one memoized 4 KiB string, then empty lists memoized until the
    # object budget runs out: the most memory any pickle can make the reader hold.
    chunk = "a" * 4096
    ops = glob("_codecs", "encode") + b"q\x00" + text(chunk) + b"q\x01" + text("latin1") + b"q\x02000"
    ops += b"]" + b"h\x00h\x01h\x02\x86Ra" * (MAX_PICKLE_DATA_BYTES // len(chunk) - 2)
    ops += b"\x94" + b"]\x940" * (MAX_PICKLE_OBJECTS // 2)
    proc, path = shards_with_labels(tree, tmp_path, b"\x80\x02" + ops + b".")
    assert_refused(proc, f"{path}: refused to load: the pickle creates more than {MAX_PICKLE_OBJECTS} objects")


@pytest.mark.slow
def test_a_split_pickle_bomb_is_refused(tree, tmp_path):
    content = b"\x80\x02]q\x00(" + text(NAME) + b"e" + glob("__builtin__", "bytes") + b"J\x00\x00\x00\x7f\x85R."
    proc, path = shards_with_split(tree, tmp_path, content)
    assert_refused(proc, f"{path}: refused to load: bytes is called with arguments (only bytes() is read)")


@pytest.mark.slow
def test_a_long_value_is_never_echoed_whole(tree, tmp_path):
    proc, path = shards_with_labels(tree, tmp_path / "p", label_pickle(text("a" * 4000)))
    assert_refused(proc, f"{path}: label of {NAME!r} is not a numeric vector ('{'a' * 60}'...)")
    header = {"format": "sen12ms-igbp-probability-labels", "version": "v" * 3000, "labels": {}}
    proc, path = shards_with_labels(tree, tmp_path / "j", json.dumps(header).encode(), "labels.json")
    assert_refused(proc, f"{path}: label file version '{'v' * 60}'..., this toolbox reads 1")
    long_name = "ROIs1158_spring_s2_1_p30" + "x" * 1000
    proc, path = shards_with_split(tree, tmp_path / "s", (long_name + "\n").encode(), "train_list.txt")
    assert_refused(proc, f"{path}:1: '{long_name[:60]}'... is not a SEN12MS patch name "
                         "(expected e.g. ROIs1158_spring_s2_1_p30.tif)")


@pytest.mark.slow
@pytest.mark.parametrize("content, reason", [
    (b'{"labels": {"' + b"n" * 20_000_000 + b'": []}}', "line 1: a name is longer than 256 characters"),
    (b'{"' + NAME.encode() + b'": "' + b"z" * 20_000_000 + b'"}',
     f"line 1: the value of {NAME!r} is longer than 4096 characters"),
    (b'{"' + NAME.encode() + b'": [' + b"0.5, " * 2_000_000 + b"0.5]}",
     f"line 1: label of {NAME!r} has more than 17 values, a probability label has 17"),
    (b'{"' + NAME.encode() + b'": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}",
     f"line 1: label of {NAME!r}: value 1 is not a number of at most 64 digits (found '[[[[[[[[[[[[[[[[[[[['...)"),
    (b"[" * 1_000_000 + b"]" * 1_000_000,
     "line 1: not valid JSON: expected '{', found '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['..."),
    (b'{"format": ' + b"[" * 1_000_000,
     "line 1: label of 'format': value 1 is not a number of at most 64 digits (found '[[[[[[[[[[[[[[[[[[[['...)"),
    (b'{"' + NAME.encode() + b'": [' + b"1" * 100 + b"]}",
     f"line 1: label of {NAME!r}: value 1 is not a number of at most 64 digits (found '11111111111111111111'...)"),
    (b'{"' + NAME.encode() + b'": [' + b"1e400, " * 16 + b"1]}",
     f"line 1: label of {NAME!r} holds a number that is not finite"),
], ids=["long-name", "long-value", "long-vector", "deep-label", "deep-top", "deep-header", "long-number", "inf"])
def test_json_bombs_and_deep_nesting_are_refused(tree, tmp_path, content, reason):
    proc, path = shards_with_labels(tree, tmp_path, content, "labels.json")
    assert_refused(proc, f"{path}: {reason}")


@pytest.mark.slow
def test_a_file_over_the_size_limit_is_refused_without_reading_it_whole(tree, tmp_path):
    path = tmp_path / "labels.json"
    with open(path, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB of zeros that take no disk
    proc = convert("shards", "--data", str(tree), "--out", str(tmp_path / "out"), "--labels", str(path),
                   "--no-progress")
    assert_refused(proc, f"{path}: larger than {MAX_FILE_BYTES} bytes, the most a label file may hold")


@pytest.mark.slow
def test_hostile_holdout_lists_are_refused_in_one_line(tree, tmp_path):
    holdout = tmp_path / "holdout.txt"
    holdout.write_bytes(b"ROIs1158_spring/s1_1\n" + b"s" * 20_000_000 + b"\n")
    proc = convert("splits", "--data", str(tree), "--holdout", str(holdout), "--out", str(tmp_path / "out"))
    assert_refused(proc, f"{holdout}:2: a line of 20000000 characters (expected one scene per line, "
                         "e.g. ROIs1158_spring/s1_63)")
    holdout.write_bytes(b"ROIs1158_spring/s1_1\n\xff\n")
    proc = convert("splits", "--data", str(tree), "--holdout", str(holdout), "--out", str(tmp_path / "out"))
    assert_refused(proc, f"{holdout}: not a text file (expected one scene per line, e.g. ROIs1158_spring/s1_63)")


def test_the_excluded_list_of_a_split_folder_is_read_within_limits(tmp_path):
    path = tmp_path / "excluded.txt"
    path.write_text(f"{NAME}: known broken triplet\nnot a line of the format\n")
    assert read_excluded(str(path)) == {NAME: "known broken triplet"}
    path.write_bytes(b"\xff\xfe: x\n")
    with pytest.raises(InputError) as err:
        read_excluded(str(path))
    assert str(err.value) == f"{path}: not a text file (expected '<S2 file name>: <reason>' per line)"
    path.write_bytes(b"x" * 5000 + b": y\n")
    with pytest.raises(InputError) as err:
        read_excluded(str(path))
    assert str(err.value) == f"{path}:1: a line of 5003 characters (expected '<S2 file name>: <reason>' per line)"


# --- valid files still load -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")  # pickle.loads of numpy 1.x names
@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("numpy_major", [1, 2])
def test_label_pickles_of_every_protocol_and_numpy_load(tmp_path, protocol, numpy_major):
    labels = labels_of(3)
    labels[next(iter(labels))] = labels[next(iter(labels))].astype(np.float32)  # not only float64
    data = pickle.dumps(labels, protocol=protocol)
    if numpy_major == 1:
        data = as_numpy1(data)
        assert b"numpy._core" not in data and b"numpy.core" in data
    expected = pickle.loads(data)  # numpy itself reads the file the same way
    path = tmp_path / "IGBP_probability_labels.pkl"
    path.write_bytes(data)
    loaded = load_labels(str(path))
    assert list(loaded) == sorted(expected)
    for name, vec in loaded.items():
        assert vec.dtype == np.float64 and vec.shape == (17,)
        assert np.array_equal(vec, expected[name].astype(np.float64))
    generic = safepickle.loads(data)
    assert all(generic[n].dtype == expected[n].dtype and np.array_equal(generic[n], expected[n]) for n in expected)


def test_python2_pickles_load(tmp_path):
    labels = labels_of(40)  # raw data with every kind of byte: quotes, backslashes, newlines
    for data in (py2_label_pickle(labels), py2_label_pickle_protocol0(labels)):
        expected = pickle.loads(data, encoding="latin1")  # how Python 3 reads a Python 2 numpy pickle
        assert sorted(expected) == sorted(labels) and all(np.array_equal(expected[n], labels[n]) for n in labels)
        loaded = parse_labels(data, "py2.pkl")
        assert list(loaded) == sorted(labels) and all(np.array_equal(loaded[n], labels[n]) for n in labels)
    names = ["ROIs1158_spring_s2_1_p30.tif", "ROIs2017_winter_s2_9_p11.tif"]
    listed = py2_list_pickle_protocol0(names)
    assert pickle.loads(listed, encoding="latin1") == names
    assert parse_split_list(listed, "train_list.pkl") == names


def test_our_compatibility_pickle_and_the_real_split_pickle_load(tmp_path, toolbox_dir):
    labels = labels_of(5)
    files = label_file_contents(labels)
    for name in ("IGBP_probability_labels.pkl", LABEL_JSON):
        loaded = parse_labels(files[name], name)
        assert list(loaded) == sorted(labels) and all(np.array_equal(loaded[n], labels[n]) for n in labels)
    assert safepickle.loads(compat_pickle({"a": np.arange(3, dtype=np.uint8)}))["a"].tolist() == [0, 1, 2]
    real = read_split_list(str(toolbox_dir / "test_list.pkl"))
    assert real == (toolbox_dir / "test_list.txt").read_text().split() and len(real) == 18106


@pytest.mark.slow
def test_the_full_dataset_label_files_are_well_under_the_limits(tmp_path):
    labels = labels_of(180_662, seed=1)
    from convert.datafiles.labels import _json_text

    names = sorted(labels)
    json_bytes = _json_text(names, np.stack([labels[n] for n in names])).encode()
    pkl_bytes = compat_pickle({n: labels[n] for n in names})
    assert len(json_bytes) < MAX_FILE_BYTES / 4 and len(pkl_bytes) < MAX_FILE_BYTES / 4
    for data, name in ((json_bytes, LABEL_JSON), (pkl_bytes, "IGBP_probability_labels.pkl")):
        loaded = parse_labels(data, name)
        assert len(loaded) == 180_662 and all(np.array_equal(loaded[n], labels[n]) for n in names[::997])


# --- fuzz: our error or a correct result ------------------------------------------------------------

def _seeds() -> tuple[list[bytes], list[bytes]]:
    labels = labels_of(2)
    names = sorted(labels)
    label_seeds = [label_file_contents(labels)[LABEL_JSON], compat_pickle(labels), py2_label_pickle(labels),
                   py2_label_pickle_protocol0(labels),
                   json.dumps({n: v.tolist() for n, v in labels.items()}).encode()]
    label_seeds += [pickle.dumps(labels, protocol=p) for p in (0, 2, 5)]
    split_seeds = [pickle.dumps(names, protocol=p) for p in (0, 3, 5)] + [py2_list_pickle_protocol0(names)]
    return label_seeds, split_seeds


LABEL_SEEDS, SPLIT_SEEDS = _seeds()


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "insert", "delete", "cut", "repeat"]))
        if kind == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = bytes(data[at:at + draw(st.integers(1, 64))]) * draw(st.integers(1, 50))
    return bytes(data)


def _one_line(exc: Exception) -> None:
    assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)


FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@FUZZ
@given(data=st.one_of(st.binary(max_size=300), mutated(LABEL_SEEDS)), name=st.sampled_from(["l.pkl", "l.json"]))
def test_fuzz_label_reader(data, name):
    try:
        labels = parse_labels(data, name)
    except InputError as exc:
        _one_line(exc)
        return
    for key, vec in labels.items():
        assert isinstance(key, str) and vec.dtype == np.float64 and vec.shape == (17,) and np.isfinite(vec).all()


@pytest.mark.slow
@FUZZ
@given(data=st.one_of(st.binary(max_size=300), mutated(SPLIT_SEEDS), mutated([b"\n".join(n.encode() for n in
                                                                                  sorted(labels_of(3)))])),
       name=st.sampled_from(["train_list.pkl", "train_list.txt"]))
def test_fuzz_split_reader(data, name):
    try:
        names = parse_split_list(data, name)
    except InputError as exc:
        _one_line(exc)
        return
    assert len(set(names)) == len(names) and all(parse_patch(n).modality == "s2" for n in names)
