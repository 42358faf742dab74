"""`python -m train` and `python -m train.evaluate` end to end, on shards of the real converter."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sen12ms_common.format import sample as sf
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.vocab.bands import resolve_bands
from sen12ms_common.vocab.igbp import LabelRule
from sen12ms_common.vocab.inputs import channel_transform
from train.config.argsfile import ORIGINAL_KEYS, read_arguments_file
from train.tasks.metrics import compute_metrics, scalar_metrics

pytestmark = pytest.mark.slow  # training and evaluation runs in subprocesses

REPO = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def split_samples(shards: Path, split: str) -> dict[str, dict]:
    """Decode a split straight from its tars (independent of the loader)."""
    manifest = load_manifest(str(shards))
    out = {}
    for entry in manifest.shards(split):
        with tarfile.open(shards / entry.name) as t:
            groups: dict[str, dict] = {}
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                groups.setdefault(key, {})[ext] = t.extractfile(m).read()
        for key, members in groups.items():
            out[key] = sf.decode_sample(members, manifest.layout)
    return out


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def run(sample_shards: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "smallcnn"
    run_cli("train", "--shards", str(sample_shards), "--model", "SmallCNN", "--input", "s1s2",
            "--label-type", "multi_label", "--epochs", "2", "--batch-size", "8", "--workers", "2",
            "--stats", "manifest", "--seed", "3", "--run-dir", str(run_dir))
    return run_dir


def test_training_run_writes_the_original_run_layout(run: Path, sample_shards: Path):
    args_files = list((run / "logs").glob("*_arguments.txt"))
    assert len(args_files) == 1
    ts = args_files[0].name[: -len("_arguments.txt")]
    # The original's test.py reads the file with `key, value = line.split()`: two tokens a line.
    lines = args_files[0].read_text().splitlines()
    assert all(len(line.split()) == 2 and line.split()[0].endswith(":") for line in lines)
    args = read_arguments_file(str(args_files[0]))
    assert list(args)[: len(ORIGINAL_KEYS)] == list(ORIGINAL_KEYS)
    assert {k: args[k] for k in ("use_s2", "use_s1", "use_RGB", "IGBP_simple", "label_type", "model",
                                 "batch_size", "num_workers", "epochs", "threshold", "lr", "decay")} == {
        "use_s2": "True", "use_s1": "True", "use_RGB": "False", "IGBP_simple": "True", "label_type": "multi_label",
        "model": "SmallCNN", "batch_size": "8", "num_workers": "2", "epochs": "2", "threshold": "0.1",
        "lr": "0.001", "decay": "1e-05"}
    assert args["exp_name"] == "smallcnn" and args["data_dir"] == str(sample_shards)
    assert args["input"] == "s1s2" and args["stats"] == "manifest" and args["seed"] == "3"

    ckpt_dir = run / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"{ts}_checkpoint.pth", f"{ts}_model_best.pth"]
    ckpt = torch.load(ckpt_dir / f"{ts}_checkpoint.pth", weights_only=True)
    assert {"epoch", "arch", "model_state_dict", "optimizer_state_dict", "best_prec"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "SmallCNN" and isinstance(ckpt["best_prec"], float)
    manifest = load_manifest(str(sample_shards))
    steps_per_epoch = -(-manifest.samples("train") // 8)
    assert ckpt["step"] == 2 * steps_per_epoch and ckpt["resume_epoch"] == 2 and ckpt["resume_batch"] == 0
    best = torch.load(ckpt_dir / f"{ts}_model_best.pth", weights_only=True)
    assert best["best_prec"] == ckpt["best_prec"] > 0

    tb = run / "logs" / "runs" / ts
    train_scalars, val_scalars = read_scalars(tb / "training"), read_scalars(tb / "val")
    assert [s for s, _ in train_scalars["loss"]] == [0, 1]
    scores = json.loads((run / "test_scores.json").read_text())
    for tag in ["loss", *scalar_metrics(scores)]:
        assert [s for s, _ in val_scalars[tag]] == [0, 1], tag
    assert max(v for _, v in val_scalars["microF1"]) == pytest.approx(best["best_prec"])
    assert set(read_scalars(tb / "test")) == set(scalar_metrics(scores))
    pred = np.load(run / "test_predictions.npz")
    truth = split_samples(sample_shards, "test")
    assert sorted(pred["ids"].tolist()) == sorted(k + ".tif" for k in truth)
    rule = LabelRule("multi_label", "simple", 0.1)
    want_true = np.stack([rule.indicator(truth[k]["label"]) for k in pred["keys"]])
    assert np.array_equal(pred["y_true"], want_true)
    n_test = manifest.samples("test")
    assert pred["probs"].shape == (n_test, 10) and list(pred["class_names"]) == list(rule.class_names)
    recomputed = compute_metrics(pred["y_true"], pred["probs"], "multi_label", list(rule.class_names))
    assert scores == json.loads(json.dumps(recomputed)) and scores["numSamples"] == n_test


def test_evaluate_reproduces_the_test_scores_of_our_checkpoint(run: Path, sample_shards: Path, tmp_path):
    best = next((run / "checkpoints").glob("*_model_best.pth"))
    run_cli("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(best), "--out", str(tmp_path),
            "--workers", "1", "--batch-size", "5")
    assert json.loads((tmp_path / "test_scores.json").read_text()) == json.loads((run / "test_scores.json").read_text())
    a, b = np.load(tmp_path / "test_predictions.npz"), np.load(run / "test_predictions.npz")
    assert np.array_equal(a["ids"], b["ids"]) and np.allclose(a["probs"], b["probs"], atol=1e-6)


ORIGINAL_ARGS = """exp_name: None
data_dir: /data/SEN12MS
label_split_dir: /data/labels_splits
use_s2: False
use_s1: False
use_RGB: True
IGBP_simple: True
label_type: single_label
threshold: 0.1
model: ResNet50
lr: 0.001
decay: 1e-05
batch_size: 64
num_workers: 4
epochs: 100
resume: None
"""


def test_evaluate_accepts_the_original_checkpoint_and_arguments_file(sample_shards: Path, tmp_path):
    from train.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("ResNet50", 3, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=1e-5)
    ckpt = tmp_path / "20200101_120000_model_best.pth"
    # Exactly what the original's main_train.py saves (best_prec is sklearn's numpy float64).
    torch.save({"epoch": 7, "arch": "ResNet50", "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "best_prec": np.float64(0.61)}, ckpt)
    args = tmp_path / "20200101_120000_arguments.txt"
    args.write_text(ORIGINAL_ARGS)
    out = tmp_path / "eval"
    proc = run_cli("train.evaluate", "--shards", str(sample_shards), "--checkpoint", str(ckpt), "--config", str(args),
                   "--out", str(out), "--batch-size", "4", "--workers", "1")
    assert "ResNet50 (epoch 7), input rgb, single_label simple" in proc.stdout

    # Reference: the original's preprocessing (official statistics) in numpy, the model in eval mode.
    truth = split_samples(sample_shards, "test")
    bands = resolve_bands("rgb")
    transform = channel_transform(bands, "official")
    keys = sorted(truth)
    x = np.stack([transform.apply(np.stack([truth[k]["s2"][b.index] for b in bands])) for k in keys])
    model.eval()
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    pred = np.load(out / "test_predictions.npz")
    assert pred["keys"].tolist() == keys
    assert np.allclose(pred["probs"], ref, atol=1e-5)
    rule = LabelRule("single_label", "simple")
    assert np.array_equal(pred["y_true"], np.stack([rule.indicator(truth[k]["label"]) for k in keys]))
    scores = json.loads((out / "test_scores.json").read_text())
    assert scores["numSamples"] == len(truth) and "conf_mat" in scores and "AverageAcc" in scores

    # Without the arguments file an original checkpoint says what it needs.
    res = CliRunner().invoke(_evaluate_main(), ["--shards", str(sample_shards), "--checkpoint", str(ckpt)])
    assert res.exit_code == 1 and "pass its arguments file with --config" in res.output
    assert len(res.output.strip().splitlines()) == 1


def _train_main():
    from train.cli.train import main

    return main


def _evaluate_main():
    from train.cli.evaluate import main

    return main


def test_help_explains_every_option():
    out = CliRunner().invoke(_train_main(), ["--help"]).output
    for opt in ("--shards", "--model", "--input", "--label-type", "--igbp", "--threshold", "--epochs", "--batch-size",
                "--lr", "--decay", "--workers", "--loader", "--device", "--amp", "--channels-last", "--compile",
                "--run-dir", "--resume", "--max-steps", "--stats", "--seed", "--shuffle-buffer", "--no-verify",
                "--skip-bad-shards"):
        assert opt in out, opt
    for default in ("default: ResNet50", "default: 0.001", "default: 1e-05", "default: 64", "default: 100",
                    "default: multi_label", "default: official"):
        assert default in " ".join(out.split()), default
    out = CliRunner().invoke(_evaluate_main(), ["--help"]).output
    for opt in ("--shards", "--checkpoint", "--config", "--split", "--out"):
        assert opt in out


def test_bad_options_give_one_line_errors(sample_shards: Path, tmp_path):
    cases = [
        (["--shards", str(tmp_path / "nowhere")], "no manifest"),
        (["--shards", str(sample_shards), "--model", "ResNet5"], "unknown model 'ResNet5'"),
        (["--shards", str(sample_shards), "--input", "B2,B99"], "unknown band 'B99'"),
        (["--shards", str(sample_shards), "--resume", str(tmp_path / "none.pth")], "no such checkpoint file"),
        (["--model", "SmallCNN"], "--shards is required"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(_train_main(), args + ["--run-dir", str(tmp_path / "r")])
        assert res.exit_code == 1, (args, res.output)
        assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


def test_amp_channels_last_and_compile_run_on_cpu(sample_shards: Path, tmp_path):
    from train.run.device import compile_available

    ok, why = compile_available()
    flags = ["--amp", "--channels-last"] + (["--compile"] if ok else [])
    proc = run_cli("train", "--shards", str(sample_shards), "--model", "SmallCNN", "--input", "rgb", "--epochs", "1",
                   "--batch-size", "8", "--workers", "0", "--max-steps", "2", "--stats", "manifest",
                   "--run-dir", str(tmp_path / "r"), *flags)
    assert "(bfloat16)" in proc.stdout and "reached --max-steps 2" in proc.stdout, proc.stdout
    ckpt = torch.load(next((tmp_path / "r" / "checkpoints").glob("*_checkpoint.pth")), weights_only=True)
    assert ckpt["step"] == 2 and ckpt["resume_epoch"] == 0 and ckpt["resume_batch"] == 2
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model_state_dict"])
    assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values() if v.is_floating_point())
    n_test = load_manifest(str(sample_shards)).samples("test")
    assert json.loads((tmp_path / "r" / "test_scores.json").read_text())["numSamples"] == n_test


def test_old_loader_name_trains_the_same_and_says_so_once(sample_shards: Path, tmp_path):
    """`--loader webdataset` (the old name) is `--loader shards`: the same weights after two
    steps, and one line saying it was renamed."""
    weights = {}
    for name in ("shards", "webdataset"):
        proc = run_cli("train", "--shards", str(sample_shards), "--model", "SmallCNN", "--input", "rgb",
                       "--epochs", "1", "--batch-size", "8", "--workers", "0", "--max-steps", "2", "--seed", "5",
                       "--loader", name, "--run-dir", str(tmp_path / name))
        said = (proc.stdout + proc.stderr).count("--loader webdataset is now called --loader shards")
        assert said == (1 if name == "webdataset" else 0), proc.stdout + proc.stderr
        ckpt = torch.load(next((tmp_path / name / "checkpoints").glob("*_checkpoint.pth")), weights_only=True)
        weights[name] = ckpt["model_state_dict"]
    assert all(torch.equal(weights["shards"][k], weights["webdataset"][k]) for k in weights["shards"])
