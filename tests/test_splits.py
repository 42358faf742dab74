"""Splits: the official hold-out / test split, scene-grouped validation, split files, bad input."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from convert.cli import cli
from convert.datafiles.splits import (BROKEN_REASON, HOLDOUT_NAME, OFFICIAL_HOLDOUT, Splits, choose_val_scenes,
                                      find_holdout, load_holdout, make_splits, scene_order_key, write_splits)
from sen12ms_common.datafiles import safepickle
from sen12ms_common.datafiles.read import load_splits
from sen12ms_common.errors import InputError
from sen12ms_common.vocab.patches import SEASONS, PatchId, SceneId, parse_patch

OFFICIAL_SEASON_COUNTS = {"ROIs1158_spring": 4242, "ROIs1868_summer": 4529,
                          "ROIs1970_fall": 5989, "ROIs2017_winter": 3346}
BROKEN = "ROIs1868_summer_s2_146_p202.tif"


@pytest.fixture(scope="module")
def official(toolbox_dir: Path) -> tuple[list[str], list[SceneId]]:
    names = safepickle.load(toolbox_dir / "test_list.pkl")
    return names, load_holdout(str(toolbox_dir / HOLDOUT_NAME))


def test_official_test_list_is_exactly_the_holdout_scenes(official, toolbox_dir: Path):
    names, holdout = official
    assert isinstance(names, list) and len(names) == 18106 == len(set(names))
    assert len(holdout) == 26
    assert load_holdout(str(OFFICIAL_HOLDOUT)) == holdout  # the copy shipped in splits/
    ids = [parse_patch(n) for n in names]
    assert {p.modality for p in ids} == {"s2"}
    assert {p.scene_id for p in ids} == set(holdout)  # every name in a hold-out scene, every scene used
    assert Counter(p.season for p in ids) == OFFICIAL_SEASON_COUNTS
    # make_splits reproduces the official test list, name for name and in order.
    splits = make_splits(ids, holdout)
    assert splits.test == names
    assert splits.train == [] and splits.val == [] and splits.excluded == {}
    # The official text list holds the same names (with CRLF line ends).
    txt = (toolbox_dir / "test_list.txt").read_text().split()
    assert txt == names


def _train_ids(scenes: dict[tuple[str, int], int]) -> list[PatchId]:
    return [PatchId(season, scene, p) for (season, scene), n in scenes.items() for p in range(1, n + 1)]


# A realistic spread of train scenes: every season, scene sizes from 40 to 900 patches.
TRAIN_SCENES = {(SEASONS[i % 4], 200 + i): 40 + (i * 137) % 860 for i in range(60)}


@pytest.mark.slow
def test_real_scale_split_is_grouped_by_scene_and_deterministic(official):
    names, holdout = official
    ids = [parse_patch(n) for n in names] + _train_ids(TRAIN_SCENES)
    ids.append(parse_patch(BROKEN))  # summer 146 is a train scene: its broken triplet must not be trained on
    ids += [parse_patch("ROIs1868_summer_s2_146_p201.tif")]
    splits = make_splits(ids, holdout, val_fraction=0.1, seed=0)
    assert splits.test == names
    assert splits.excluded == {BROKEN: BROKEN_REASON}
    assert BROKEN not in splits.train + splits.val + splits.test
    assert len(splits.train) + len(splits.val) == sum(TRAIN_SCENES.values()) + 1
    scene_sets = {k: {parse_patch(n).scene_id for n in v} for k, v in splits.lists().items()}
    assert not scene_sets["train"] & scene_sets["val"]
    assert not (scene_sets["train"] | scene_sets["val"]) & scene_sets["test"]
    # Whole scenes: a val scene has all of its patches in val.
    per_scene = Counter(parse_patch(n).scene_id for n in splits.val)
    assert all(per_scene[s] == TRAIN_SCENES[(s.season, s.scene)] for s in per_scene)
    # Per season, val is within half a scene of 10 % of the season's train patches.
    for season in SEASONS:
        season_train = sum(n for (s, _), n in TRAIN_SCENES.items() if s == season)
        season_train += season == "ROIs1868_summer"  # ROIs1868_summer_s2_146_p201
        val_n = sum(1 for n in splits.val if n.startswith(season))
        largest = max(n for (s, _), n in TRAIN_SCENES.items() if s == season)
        assert abs(val_n - 0.1 * season_train) <= largest / 2, season
    # Deterministic for a seed, different for another seed; names sorted as strings.
    again = make_splits(list(reversed(ids)), holdout, val_fraction=0.1, seed=0)
    assert again == splits
    assert splits.train == sorted(splits.train) and splits.val == sorted(splits.val)
    others = [set(make_splits(ids, holdout, 0.1, seed).val) for seed in (1, 2, 3)]
    assert any(o != set(splits.val) for o in others)


def test_val_scene_choice_follows_the_documented_rule():
    counts = {SceneId("ROIs1970_fall", n): 100 for n in (1, 2, 3, 4, 5)}
    order = sorted(counts, key=lambda s: scene_order_key(s, 42))
    # 25 % of 500 = 125 patches: one scene (100) is closer to it than two (200).
    assert choose_val_scenes(counts, 0.25, 42) == set(order[:1])
    # 35 % = 175: two scenes (200) are closer than one.
    assert choose_val_scenes(counts, 0.35, 42) == set(order[:2])
    # The season always keeps a train scene.
    assert choose_val_scenes(counts, 0.99, 42) == set(order[:4])
    assert choose_val_scenes(counts, 0.0, 42) == set()
    import hashlib
    assert scene_order_key(SceneId("ROIs1970_fall", 3), 42) == hashlib.sha256(b"42:ROIs1970_fall_3").hexdigest()


def test_small_trees_still_get_a_validation_scene():
    holdout = [SceneId("ROIs1158_spring", 63)]
    ids = (_train_ids({("ROIs1158_spring", 1): 3, ("ROIs1868_summer", 2): 4})
           + _train_ids({("ROIs1158_spring", 63): 2}))
    s = make_splits(ids, holdout, val_fraction=0.1, seed=0)
    assert len({parse_patch(n).scene_id for n in s.val}) == 1 and s.train and s.val
    assert {parse_patch(n).scene_id for n in s.val}.isdisjoint({parse_patch(n).scene_id for n in s.train})
    assert s.test == ["ROIs1158_spring_s2_63_p1.tif", "ROIs1158_spring_s2_63_p2.tif"]
    assert make_splits(ids, holdout, val_fraction=0.0).val == []
    only_one = make_splits(_train_ids({("ROIs1158_spring", 1): 3}), holdout, val_fraction=0.5)
    assert only_one.val == [] and len(only_one.train) == 3
    with pytest.raises(ValueError, match="val_fraction"):
        make_splits(ids, holdout, val_fraction=1.0)


def test_broken_triplet_stays_in_test_when_its_scene_is_held_out():
    ids = [parse_patch(BROKEN), parse_patch("ROIs1868_summer_s2_146_p1.tif")]
    s = make_splits(ids, [SceneId("ROIs1868_summer", 146)])
    assert s.test == ["ROIs1868_summer_s2_146_p1.tif", BROKEN] and s.excluded == {}


def test_split_files_round_trip(tmp_path: Path):
    splits = Splits(train=["ROIs1158_spring_s2_1_p30.tif", "ROIs1158_spring_s2_1_p31.tif"],
                    val=["ROIs1970_fall_s2_7_p3.tif"], test=["ROIs2017_winter_s2_9_p11.tif"],
                    excluded={BROKEN: BROKEN_REASON})
    paths = write_splits(splits, tmp_path / "a")
    assert [Path(p).name for p in paths] == ["train_list.txt", "train_list.pkl", "val_list.txt", "val_list.pkl",
                                       "test_list.txt", "test_list.pkl", "excluded.txt"]
    out = tmp_path / "a"
    assert (out / "train_list.txt").read_text() == "ROIs1158_spring_s2_1_p30.tif\nROIs1158_spring_s2_1_p31.tif\n"
    assert pickle.loads((out / "val_list.pkl").read_bytes()) == splits.val
    assert safepickle.load(out / "test_list.pkl") == splits.test
    assert (out / "excluded.txt").read_text() == f"{BROKEN}: {BROKEN_REASON}\n"
    assert load_splits(str(out)) == splits.lists()
    # The original ships pickles only: they are read through the restricted unpickler.
    for name in ("train_list.txt", "val_list.txt", "test_list.txt"):
        (out / name).unlink()
    assert load_splits(str(out)) == splits.lists()
    # No val list (the original never shipped one) is fine.
    (out / "val_list.pkl").unlink()
    assert load_splits(str(out)) == {"train": splits.train, "test": splits.test}
    write_splits(splits, tmp_path / "b")
    write_splits(splits, tmp_path / "c")
    for p in (tmp_path / "b").iterdir():
        assert p.read_bytes() == (tmp_path / "c" / p.name).read_bytes()


def test_load_splits_reads_crlf_text(tmp_path: Path, toolbox_dir: Path):
    (tmp_path / "test_list.txt").write_bytes((toolbox_dir / "test_list.txt").read_bytes())
    (tmp_path / "train_list.txt").write_text("ROIs1158_spring_s2_1_p30.tif\r\n\r\n")
    lists = load_splits(str(tmp_path))
    assert len(lists["test"]) == 18106 and lists["train"] == ["ROIs1158_spring_s2_1_p30.tif"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("name, content, message", [
    ("train_list.txt", b"ROIs1158_spring_s2_1_p30.tif\nhello.tif\n", ":2: 'hello.tif' is not a SEN12MS patch name"),
    ("train_list.txt", b"ROIs1158_spring_s1_1_p30.tif\n", ":1: 'ROIs1158_spring_s1_1_p30.tif' is an s1 name"),
    ("train_list.txt", b"ROIs1158_spring_s2_1_p30.tif\nROIs1158_spring_s2_1_p30\n", ":2: ROIs1158_spring_s2_1_p30.tif is listed twice"),
    ("train_list.txt", b"\xff\xfe\x00", "not a text file"),
    ("train_list.pkl", pickle.dumps({"a": 1}), "expected a pickled list of S2 file names, found dict"),
    ("train_list.pkl", pickle.dumps(["ROIs1158_spring_s2_1_p30.tif", 7]), "(item 2): 7 is not a file name string"),
    ("train_list.pkl", b"\x80\x03]q", "not a readable pickle"),
])
def test_malformed_split_lists_give_one_line_errors(tmp_path: Path, name: str, content: bytes, message: str):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "test_list.txt").write_text("ROIs1158_spring_s2_63_p1.tif\n")
    with pytest.raises(InputError) as err:
        load_splits(str(tmp_path))
    text = str(err.value)
    assert text.startswith(str(tmp_path / name)) and message in text and "\n" not in text


def test_split_list_problems_across_files(tmp_path: Path):
    marker = tmp_path / "pwned"
    (tmp_path / "test_list.txt").write_text("ROIs1158_spring_s2_63_p1.tif\n")
    (tmp_path / "train_list.pkl").write_bytes(pickle.dumps([_Evil(marker)]))
    with pytest.raises(InputError) as err:
        load_splits(str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path / 'train_list.pkl'}: refused to load")
    assert not marker.exists()
    (tmp_path / "train_list.pkl").unlink()
    with pytest.raises(InputError, match=r": no train_list.txt or train_list.pkl$"):
        load_splits(str(tmp_path))
    (tmp_path / "train_list.txt").write_text("ROIs1158_spring_s2_63_p1.tif\n")
    with pytest.raises(InputError, match="ROIs1158_spring_s2_63_p1.tif is in both the train and the test list"):
        load_splits(str(tmp_path))


def test_holdout_lookup_order_and_errors(tmp_path: Path):
    tree = tmp_path / "tree"
    tree.mkdir()
    assert find_holdout(str(tree), None) == str(OFFICIAL_HOLDOUT)
    (tree / HOLDOUT_NAME).write_text("ROIs1970_fall/s1_7\r\n")
    assert find_holdout(str(tree), None) == str(tree / HOLDOUT_NAME)
    mine = tmp_path / "mine.txt"
    mine.write_text("ROIs1158_spring/s2_1\nROIs1158_spring_1\n\nROIs2017_winter/s1_9\n")
    assert find_holdout(str(tree), str(mine)) == str(mine)
    assert load_holdout(str(mine)) == [SceneId("ROIs1158_spring", 1), SceneId("ROIs2017_winter", 9)]
    with pytest.raises(InputError, match=f"^{tmp_path / 'nope.txt'}: no such hold-out list$"):
        find_holdout(str(tree), str(tmp_path / "nope.txt"))
    mine.write_text("ROIs1158_spring/s1_1\nspring 7\n")
    with pytest.raises(InputError, match=f"^{mine}:2: 'spring 7' is not a SEN12MS scene"):
        load_holdout(str(mine))


def test_splits_command_on_the_sample_tree(sample_tree: Path, tmp_path: Path):
    out = tmp_path / "splits"
    result = CliRunner().invoke(cli, ["splits", "--data", str(sample_tree), "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    lists = load_splits(str(out))
    holdout = set(load_holdout(str(sample_tree / HOLDOUT_NAME)))
    all_s2 = sorted(p.name for p in sample_tree.glob("*/s2_*/*.tif"))
    assert lists["test"] == [n for n in all_s2 if parse_patch(n).scene_id in holdout] and lists["test"]
    assert sorted(lists["train"] + lists["val"] + lists["test"] + [BROKEN]) == all_s2
    assert lists["val"] and lists["train"]
    assert BROKEN not in lists["train"] + lists["val"]
    scenes = {k: {parse_patch(n).scene_id for n in v} for k, v in lists.items()}
    assert not scenes["train"] & scenes["val"] and not scenes["train"] & scenes["test"]
    # The printed table: one row per split with per-season counts and the total.
    for split, names in lists.items():
        counts = Counter(parse_patch(n).season for n in names)
        row = f"{split:<6}" + "".join(f"{counts.get(s, 0):>9}" for s in SEASONS) + f"{len(names):>9}"
        assert row in result.output
    assert f"left out: {BROKEN}: {BROKEN_REASON}" in result.output
    again = tmp_path / "again"
    CliRunner().invoke(cli, ["splits", "--data", str(sample_tree), "--out", str(again), "--seed", "3"])
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in again.iterdir())


def test_splits_command_lists_bad_inputs_and_still_writes(tmp_path: Path):
    from convert.sample.sen12ms import synthesize

    root = tmp_path / "tree"
    synthesize(root, scenes=3, patches_per_scene=2, seed=5, progress=False)
    s2 = sorted(root.glob("*/s2_*/*.tif"))
    s1_missing = Path(str(s2[0]).replace("/s2_", "/s1_").replace("_s2_", "_s1_"))
    s1_missing.unlink()
    stray = s2[1].parent / "ROIs1158_spring_s2_x_p1.tif"
    stray.write_bytes(b"")
    out = tmp_path / "splits"
    result = CliRunner().invoke(cli, ["splits", "--data", str(root), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    err = result.stderr.splitlines()
    assert f"{s2[0]}: incomplete triplet: no s1 patch (expected {s1_missing})" in err
    assert f"{stray}: not a SEN12MS patch name: '{stray.name}' (expected e.g. ROIs1158_spring_s2_1_p30.tif)" in err
    assert err[-1] == "Error: 2 input file(s) could not be used (listed above); the lists were written without them"
    lists = load_splits(str(out))
    written = lists["train"] + lists.get("val", []) + lists["test"]
    assert s2[0].name not in written and len(written) == len(s2) - 1
    assert f"{s2[0].name}: incomplete triplet: no s1 patch" in (out / "excluded.txt").read_text()


def test_splits_command_refuses_the_shipped_folder_and_bad_holdout(tmp_path: Path, sample_tree: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    import convert.datafiles.splits

    # A stand-in for the repository's splits/ folder, so that a broken guard cannot touch the real one.
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "test_list.txt").write_bytes(b"official\r\n")
    monkeypatch.setattr(convert.datafiles.splits, "OFFICIAL_HOLDOUT", shipped / HOLDOUT_NAME)
    r = CliRunner().invoke(cli, ["splits", "--data", str(sample_tree), "--out", str(shipped / ".")])
    assert r.exit_code == 1 and "holds the official lists shipped with the toolbox" in r.stderr
    assert sorted(p.name for p in shipped.iterdir()) == ["test_list.txt"]
    assert (shipped / "test_list.txt").read_bytes() == b"official\r\n"
    monkeypatch.undo()
    r = CliRunner().invoke(cli, ["splits", "--data", str(sample_tree), "--holdout", str(tmp_path / "x.txt"),
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.stderr.strip() == f"Error: {tmp_path / 'x.txt'}: no such hold-out list"
    assert not (tmp_path / "o").exists()
