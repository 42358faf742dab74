"""Credentials in a URL given to any option never leave the command (issue 29, item 4): the six
options that printed them (`convert shards --labels/--splits`, `train --resume`,
`train.evaluate --checkpoint/--config`, `train.predict --checkpoint`), each with user info in
four forms and with a presigned query string: one line, no secret on stdout, stderr or in any
file the command wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sen12ms_common.storage.redaction import redact

pytestmark = pytest.mark.slow  # subprocesses, each importing torch

REPO = Path(__file__).resolve().parents[1]
SECRETS = ("wJalrXUtnSECRET", "AKIAHIDDENKEY", "TOKENSECRET", "SIGSECRET", "CREDSECRET", "SESSIONSECRET")
FORMS = {
    "key-secret": "s3://AKIAHIDDENKEY:wJalrXUtnSECRET@bucket/x",
    "bare-token": "https://TOKENSECRET@example.invalid/x",
    "encoded": "s3://AKIAHIDDENKEY%3AwJalrXUtnSECRET@bucket/x",
    "presigned": "s3://bucket/x?X-Amz-Signature=SIGSECRET&X-Amz-Credential=CREDSECRET"
                 "&X-Amz-Security-Token=SESSIONSECRET",
}


def _env(tmp: Path) -> dict[str, str]:
    """No credentials from anywhere: a presigned s3:// URL fails at once, without the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    return env


def _commands(url: str, tmp: Path, tree: Path, shards: Path, ckpt: Path) -> dict[str, list[str]]:
    dev = ("--device", "cpu")
    return {
        "labels": ["convert", "shards", "--data", str(tree), "--out", str(tmp / "o1"), "--labels", url,
                   "--no-progress"],
        "splits": ["convert", "shards", "--data", str(tree), "--out", str(tmp / "o2"), "--splits", url,
                   "--no-progress"],
        "resume": ["train", "--shards", str(shards), "--model", "SmallCNN", "--input", "rgb", "--workers", "0",
                   *dev, "--run-dir", str(tmp / "o3"), "--resume", url],
        "checkpoint": ["train.evaluate", "--shards", str(shards), "--checkpoint", url, "--out", str(tmp / "o4"), *dev],
        "config": ["train.evaluate", "--shards", str(shards), "--checkpoint", str(ckpt), "--config", url,
                   "--out", str(tmp / "o5"), *dev],
        "predict": ["train.predict", "--checkpoint", url, "--data", str(tree), "--out", str(tmp / "o6"), *dev],
    }


@pytest.fixture(scope="module")
def checkpoint(sample_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("secret-base") / "run"
    proc = subprocess.run([sys.executable, "-m", "train", "--shards", str(sample_shards), "--model", "SmallCNN",
                           "--input", "rgb", "--workers", "0", "--device", "cpu", "--epochs", "1", "--batch-size",
                           "8", "--run-dir", str(run)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return next((run / "checkpoints").glob("*_model_best.pth"))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_no_option_prints_or_writes_a_secret(form: str, checkpoint: Path, sample_tree: Path, sample_shards: Path,
                                             tmp_path: Path) -> None:
    url = FORMS[form]
    commands = _commands(url, tmp_path, sample_tree, sample_shards, checkpoint)
    procs = {name: subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=_env(tmp_path), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (name, out, err)
        assert "Traceback" not in err and err.startswith("Error: "), (name, err)
        leaked = [s for s in SECRETS if s in out + err]
        assert not leaked, (name, leaked, out + err)
        assert redact(url) in err, (name, err)  # the option is still named, without its secret
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert not [s for s in SECRETS if s.encode() in text], path


def test_redact_covers_user_info_and_signing_parameters() -> None:
    assert redact("s3://K:S@b/x and http://u@h/p, s3://b/key@2x.png, /data/a@b") == \
        "s3://***@b/x and http://***@h/p, s3://b/key@2x.png, /data/a@b"
    assert redact("s3://AKIA%3Asec%2Fret@bucket/x") == "s3://***@bucket/x"
    assert redact("Error: https://h/x?X-Amz-Date=1&X-Amz-Signature=abc&x-amz-credential=A/b/c: cannot read") == \
        "Error: https://h/x?X-Amz-Date=1&X-Amz-Signature=***&x-amz-credential=***: cannot read"
    assert redact("https://acct.blob/c/b?sv=2020&sig=abc%2B&se=1 (broke)") == \
        "https://acct.blob/c/b?sv=2020&sig=***&se=1 (broke)"
