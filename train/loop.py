"""Train, validate, test: the run directory, epochs, checkpoints, TensorBoard, SIGTERM.

Run directory (the original's layout):
  <run>/logs/<ts>_arguments.txt          options of each launch (`key: value`)
  <run>/logs/<ts>_train.log              what the run printed
  <run>/logs/runs/<ts>/training|val|test TensorBoard scalars
  <run>/checkpoints/<ts>_checkpoint.pth  after every epoch (and on SIGTERM / --max-steps)
  <run>/checkpoints/<ts>_model_best.pth  best validation micro-F1 so far
  <run>/test_scores.json, test_predictions.npz   the best checkpoint on the test split

Exact resume: a checkpoint holds the model, optimizer, AMP scaler, RNG states and where the run
stands (`resume_epoch`, `resume_batch`, `step`, the loss sums of the epoch); the data order
is a function of the options and the epoch (see `train.data.plan`), so the resumed run reads
the batches the interrupted one had not reached and ends with the same weights.

Under torchrun (see `train.distributed`) every rank runs this loop on its own part of the data
with the model wrapped in DistributedDataParallel. The ranks agree before every step (one small
CPU all-reduce) on whether any of them ran out of batches, was asked to stop or hit a data
error, so they always take the same number of steps and stop at the same one; evaluation
gathers every rank's predictions, so metrics are those of the whole split; only rank 0 writes
files and log lines.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from sen12ms_common import storage
from sen12ms_common.bands import BandRef, resolve_bands
from sen12ms_common.igbp import LabelRule
from sen12ms_common.inputs import ChannelTransform, channel_transform
from sen12ms_common.manifest import Manifest, load_manifest

from .checkpoint import capture_rng_state, load_model_weights, save_checkpoint
from .config import DATA_ORDER_KEYS, TrainConfig
from .data import DataError, Loader, LoaderSpec, make_loader
from .device import InputTransform, Precision, configure_backends, precision, prepare_model, resolve_device
from .distributed import (Dist, agree_max, broadcast_object, broadcast_state, gather_objects, rank_seed,
                          sum_over_ranks, wrap_model)
from .labelcheck import LabelCheck, label_check
from .metrics import compute_metrics, scalar_metrics
from .models import build_model
from .outputs import RunDir, RunFiles, RunLog, close_outputs, open_run, write_checkpoint, write_scores
from .resume import check_resume_order, restore

Echo = Callable[[str], None]


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


# --- signals ---------------------------------------------------------------------------------

class StopFlag:
    """SIGTERM / Ctrl-C set a flag that the loop checks after every step; a second Ctrl-C
    interrupts at once. When the run ends with `Interrupted` the flag's handlers stay installed:
    the process is expected to exit, and a further SIGTERM must not kill it on the way."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        interrupted = False
        try:
            yield self
        except Interrupted:
            # On the way out after a checkpoint: a further SIGTERM (torchrun stopping the other
            # ranks once one has exited) must not kill the process halfway through its exit.
            interrupted = True
            raise
        finally:
            if not interrupted:
                for sig, old in self._old.items():
                    signal.signal(sig, old)


# --- what a run is made of -------------------------------------------------------------------

@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0          # the epoch to run next (0-based)
    batch: int = 0          # batches of that epoch already trained
    step: int = 0           # optimizer steps so far
    best_prec: float = 0.0  # best validation micro-F1 so far
    loss_sum: float = 0.0   # sum of (batch loss x batch samples) of the current epoch
    loss_count: int = 0


@dataclass
class Setup:
    """The model, its input and label rule, and the device, as a run or an evaluation needs."""

    manifest: Manifest
    bands: tuple[BandRef, ...]
    rule: LabelRule
    transform: ChannelTransform
    device: torch.device
    model: nn.Module      # owns the state dict
    forward: nn.Module    # what is called (compiled or the model itself)
    precision: Precision
    input_fn: InputTransform
    loss_fn: nn.Module
    train_forward: nn.Module | None = None  # DistributedDataParallel(forward) under torchrun

    @property
    def step_forward(self) -> nn.Module:
        return self.train_forward if self.train_forward is not None else self.forward


def loss_function(label_type: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if label_type == "multi_label" else nn.CrossEntropyLoss()


def make_setup(*, shards: str, model_name: str, input_spec: str, label_type: str, igbp: str,
               threshold: float, stats: str, device: str = "auto", amp: bool = False,
               channels_last: bool = False, compile: bool = False,
               transform: ChannelTransform | None = None, manifest: Manifest | None = None) -> Setup:
    manifest = manifest or load_manifest(shards)
    bands = resolve_bands(input_spec)
    rule = LabelRule(label_type, igbp, threshold)
    if transform is None:
        transform = channel_transform(bands, stats, manifest.stats)
    dev = resolve_device(device)
    configure_backends(dev)
    model = build_model(model_name, len(bands), rule.num_classes)
    model, forward = prepare_model(model, dev, channels_last=channels_last, compile=compile)
    return Setup(manifest, bands, rule, transform, dev, model, forward, precision(dev, amp),
                 InputTransform(transform, dev, channels_last), loss_function(label_type))


def loader_spec(setup: Setup, root: str, split: str, *, batch_size: int, train: bool, seed: int = 0,
                workers: int = 0, threads: int = 0, streams: int = 8, shuffle_buffer: int = 1000,
                verify: bool = True,
                skip_bad_shards: bool = False, rank: int = 0, world_size: int = 1,
                augment: bool = False) -> LoaderSpec:
    return LoaderSpec(root=root, manifest=setup.manifest, split=split, bands=setup.bands, rule=setup.rule,
                      batch_size=batch_size, transform=setup.transform, train=train, seed=seed,
                      workers=workers, threads=threads, streams=streams, shuffle_buffer=shuffle_buffer, rank=rank,
                      world_size=world_size, pin_memory=setup.device.type == "cuda", device=str(setup.device),
                      verify=verify, skip_bad_shards=skip_bad_shards, augment=augment and train)


def has_split(manifest: Manifest, split: str) -> bool:
    return split in manifest.splits and manifest.samples(split) > 0


# --- evaluation ------------------------------------------------------------------------------

@dataclass
class Predictions:
    keys: list[str]
    probs: np.ndarray       # (N, classes) float32: sigmoid (multi) or softmax (single)
    prob_igbp: np.ndarray   # (N, 17) stored probability labels
    y_true: np.ndarray      # (N, classes) uint8 0/1
    loss: float

    def sorted(self) -> "Predictions":
        order = np.argsort(np.asarray(self.keys, dtype=object), kind="stable")
        return Predictions([self.keys[i] for i in order], self.probs[order], self.prob_igbp[order],
                           self.y_true[order], self.loss)


def predict(setup: Setup, loader: Loader, *, desc: str = "eval", stop: StopFlag | None = None,
            progress_bar: bool = True, labels: LabelCheck | None = None) -> Predictions:
    """Run the model over every batch of one pass of `loader` (no gradients); sorted by key.
    `labels` checks each batch's labels (default: stop at the first bad one)."""
    from tqdm import tqdm

    labels = labels or LabelCheck(skipped=loader.skipped)

    setup.forward.eval()
    keys: list[str] = []
    probs, prob_igbp = [], []
    loss_sum, n = 0.0, 0
    multi = setup.rule.label_type == "multi_label"
    with torch.no_grad():
        for batch in tqdm(loader.epoch(0), total=len(loader), desc=desc, unit="batch", leave=False,
                          disable=None if progress_bar else True):
            batch = labels(batch)
            if batch is None:
                continue
            x = setup.input_fn(batch["image"])
            with setup.precision.autocast():
                logits = setup.forward(x)
            logits = logits.float()
            target = batch["target"].to(setup.device, non_blocking=True)
            loss_sum += float(setup.loss_fn(logits, target)) * len(batch["key"])
            n += len(batch["key"])
            p = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=1)
            probs.append(p.cpu().numpy())
            prob_igbp.append(batch["prob"].numpy())
            keys.extend(batch["key"])
            if stop is not None and stop.requested:
                raise Interrupted(stop.signum or signal.SIGTERM, f"stopped during {desc}")
    c = setup.rule.num_classes
    probs_a = np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, c), np.float32)
    igbp_a = np.concatenate(prob_igbp).astype(np.float32) if prob_igbp else np.zeros((0, 17), np.float32)
    y_true = setup.rule.indicator(igbp_a).astype(np.uint8) if len(igbp_a) else np.zeros((0, c), np.uint8)
    # Sorted by key: metrics and files do not depend on the loader's order (sums in float64).
    return Predictions(keys, probs_a, igbp_a, y_true, loss_sum / max(n, 1)).sorted()


def predict_all(setup: Setup, loader: Loader, d: Dist, *, desc: str = "eval", stop: StopFlag | None = None,
                on_keys: Callable[[list[str]], None] | None = None, labels: LabelCheck | None = None) -> Predictions:
    """`predict` over this rank's part of the split, gathered from every rank and sorted by key:
    the predictions of the whole split, on every rank. A data error or (with `stop`) a stop
    request on any rank is raised on every rank."""
    if not d.enabled:
        preds = predict(setup, loader, desc=desc, stop=stop, labels=labels)
        if on_keys is not None:
            on_keys(preds.keys)
        return preds
    local, error = None, None
    try:
        local = predict(setup, loader, desc=desc, progress_bar=d.is_main, labels=labels)
    except DataError as exc:  # reported below, on every rank, so that no rank waits for this one
        error = str(exc)
    if local is not None and on_keys is not None:
        on_keys(local.keys)
    payload = None if local is None else (local.keys, local.probs, local.prob_igbp, local.y_true,
                                          local.loss * len(local.keys))
    parts = gather_objects(d, (error, stop is not None and stop.requested, payload))
    errors = [f"rank {r}: {e}" for r, (e, _, _) in enumerate(parts) if e is not None]
    if errors:
        raise DataError("; ".join(errors))
    if any(s for _, s, _ in parts):
        raise Interrupted(stop.signum or signal.SIGTERM if stop is not None else signal.SIGTERM,
                          f"stopped during {desc}")
    keys = [k for _, _, p in parts for k in p[0]]
    n = max(len(keys), 1)
    return Predictions(keys, np.concatenate([p[1] for _, _, p in parts]), np.concatenate([p[2] for _, _, p in parts]),
                       np.concatenate([p[3] for _, _, p in parts]), sum(p[4] for _, _, p in parts) / n).sorted()


class KeyTrace:
    """Appends `split epoch key` lines of every sample this rank used to `<dir>/keys-rank<R>.txt`
    (debugging aid, enabled by SEN12MS_TRACE_KEYS=DIR; checks that ranks read disjoint parts)."""

    def __init__(self, folder: str | None, rank: int) -> None:
        self.path = Path(folder) / f"keys-rank{rank}.txt" if folder else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, split: str, epoch: int | str, keys: list[str]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(f"{split} {epoch} {k}\n" for k in keys)


def score(setup: Setup, preds: Predictions) -> dict[str, Any]:
    return compute_metrics(preds.y_true, preds.probs, setup.rule.label_type, list(setup.rule.class_names))


# --- training --------------------------------------------------------------------------------

def _next_batch(it: Iterator[dict[str, Any]], stop: StopFlag, d: Dist, labels: LabelCheck,
                on_dropped: Callable[[], None]) -> tuple[dict[str, Any] | None, str]:
    """The next batch of this rank, or None with why the epoch ends here: '' (no batch left),
    'stopped', or a data error. Under torchrun the ranks agree first: all of them stop at the
    step where the first one runs out of batches (--skip-bad-shards), is stopped by a signal or
    fails. `labels` checks the batch's labels; a batch whose every sample it drops
    (--skip-bad-shards) is counted by `on_dropped` and the next one taken."""
    error: str | None = None
    try:
        while True:
            raw = next(it, None)
            batch = labels(raw) if raw is not None else None
            if raw is None or batch is not None:
                break
            on_dropped()
    except DataError as exc:
        if not d.enabled:
            raise
        batch, error = None, str(exc)
    if not d.enabled:
        return batch, ""
    ended, stopped, failed = agree_max(d, [batch is None, stop.requested, error is not None])
    if failed:
        messages = gather_objects(d, error)
        raise DataError("; ".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None))
    if stopped:
        return None, "stopped"
    return (None, "") if ended else (batch, "")


def train_steps(setup: Setup, optimizer: torch.optim.Optimizer, loader: Loader, progress: Progress, *,
                max_steps: int | None, stop: StopFlag, desc: str, dist: Dist | None = None,
                on_keys: Callable[[list[str]], None] | None = None, labels: LabelCheck | None = None) -> str:
    """Train the rest of epoch `progress.epoch`: 'done', 'max_steps' or 'stopped'. `labels` checks
    each batch's labels (default: stop at the first bad one)."""
    from tqdm import tqdm

    labels = labels or LabelCheck(skipped=loader.skipped)

    d = dist or Dist()
    forward = setup.step_forward
    forward.train()
    scaler = setup.precision.scaler
    bar = tqdm(total=len(loader), initial=progress.batch, desc=desc, unit="batch", leave=False,
               disable=None if d.is_main else True)
    it = loader.epoch(progress.epoch, start_batch=progress.batch)
    try:
        while True:
            batch, why = _next_batch(it, stop, d, labels, lambda: setattr(progress, "batch", progress.batch + 1))
            if why == "stopped":
                return "stopped"
            if batch is None:
                return "done"
            x = setup.input_fn(batch["image"])
            y = batch["target"].to(setup.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with setup.precision.autocast():
                logits = forward(x)
            loss = setup.loss_fn(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = len(batch["key"])
            progress.loss_sum += float(loss.detach()) * n
            progress.loss_count += n
            progress.batch += 1
            progress.step += 1
            bar.update(1)
            if on_keys is not None:
                on_keys(batch["key"])
            # One process stops right after the step; ranks learn of it at their next agreement.
            if not d.enabled and stop.requested:
                return "stopped"
            if max_steps is not None and progress.step >= max_steps:
                return "max_steps"
    finally:
        it.close()  # shuts the loader's workers down also when the epoch ends early
        bar.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunResult:
    run_dir: str  # local path or s3:// URL, as the checkpoints below
    timestamp: str
    checkpoint: str
    best: str
    progress: Progress
    test_scores: dict[str, Any] | None


def _skipped(d: Dist, *loaders: Loader | None) -> list[str]:
    """What the loaders of every rank skipped so far, each problem once (collective)."""
    mine = [s for loader in loaders if loader is not None for s in loader.skipped]
    return list(dict.fromkeys(s for part in gather_objects(d, mine) for s in part))


def fit(cfg: TrainConfig, checkpoint: Mapping[str, Any] | None = None, echo: Echo = print, *,
        dist: Dist | None = None, device: str | None = None, trace_keys: str | None = None) -> RunResult:
    """Train as `python -m train` does; returns where everything went.

    `checkpoint`: the loaded `cfg.resume` (ours or the original's). `dist`: this process's
    place under torchrun (`train.distributed.init_from_env`), `device`: its device (default
    `cfg.device`). `trace_keys`: folder for `KeyTrace` files.
    """
    d = dist or Dist()
    main = d.is_main
    log = RunLog(echo if main else None)
    trace = KeyTrace(trace_keys, d.rank)
    _seed_everything(cfg.seed)
    RunDir(cfg.resolved_run_dir())  # an unusable --run-dir fails before anything is loaded
    manifest = load_manifest(cfg.shards)
    setup = make_setup(shards=cfg.shards, model_name=cfg.model, input_spec=cfg.input, label_type=cfg.label_type,
                       igbp=cfg.igbp, threshold=cfg.threshold, stats=cfg.stats, device=device or cfg.device,
                       amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile, manifest=manifest)
    if d.rank > 0:  # same initial weights everywhere (seeded above), own dropout draws per rank
        torch.manual_seed(rank_seed(cfg.seed, d.rank))
    optimizer = torch.optim.Adam(setup.model.parameters(), lr=cfg.lr, weight_decay=cfg.decay)
    progress = Progress()
    ts = restore(checkpoint, cfg, setup, optimizer, progress, d) if checkpoint is not None else None
    # After loading: DDP starts every rank from rank 0's weights.
    setup.train_forward = wrap_model(setup.forward, setup.device, d)
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, workers=cfg.workers, threads=cfg.threads,
                  streams=cfg.streams,
                  shuffle_buffer=cfg.shuffle_buffer, verify=cfg.verify, skip_bad_shards=cfg.skip_bad_shards,
                  rank=d.rank, world_size=d.world_size)
    train_loader = make_loader(cfg.loader, loader_spec(setup, cfg.shards, "train", train=True,
                                                       augment=cfg.augment, **common))
    if len(train_loader) == 0:
        raise DataError(f"{cfg.shards}: no train samples in this shard set"
                        + (f" for each of {d.world_size} processes" if d.enabled else ""))
    val_loader = (make_loader(cfg.loader, loader_spec(setup, cfg.shards, "val", train=False, **common))
                  if has_split(manifest, "val") else None)
    checks = {name: label_check(loader, cfg.shards, name, cfg.skip_bad_shards)
              for name, loader in (("train", train_loader), ("val", val_loader)) if loader is not None}
    where = (f"{d.world_size} processes ({d.backend}), {setup.device} on rank 0" if d.enabled
             else str(setup.device))
    per = (f"{train_loader.samples} samples = {len(train_loader)} batches/epoch on each of {d.world_size} ranks "
           f"({manifest.samples('train')} in the split)" if d.enabled
           else f"{train_loader.samples} samples = {len(train_loader)} batches/epoch")
    # The first write: what failed before left nothing behind.
    files = open_run(cfg, ts, d, log)
    ts, ckpt_path, best_path = files.ts, files.checkpoint, files.best

    def scalar(split: str, tag: str, value: float, epoch: int) -> None:
        if files.events is not None:
            files.events.scalar(split, tag, value, epoch)

    def sync() -> None:
        log.sync()
        if files.events is not None:
            files.events.sync()

    def save(is_best: bool) -> None:
        # Collective: every rank calls it at the same point; rank 0 writes.
        loss_sum, loss_count = sum_over_ranks(d, [progress.loss_sum, progress.loss_count])
        rng_states = gather_objects(d, capture_rng_state())
        if not main:
            return
        extra = {
            "scheduler_state_dict": None,
            "scaler_state_dict": setup.precision.scaler.state_dict(),
            "rng_state": rng_states[0],
            "step": progress.step,
            "resume_epoch": progress.epoch,
            "resume_batch": progress.batch,
            "epoch_loss": (loss_sum, int(loss_count)),
            "config": cfg.to_dict(),
            "data_order": {**{k: getattr(cfg, k) for k in DATA_ORDER_KEYS}, "world_size": d.world_size},
            "input_transform": {"bands": [b.name for b in setup.bands],
                                "scale": setup.transform.scale.tolist(),
                                "offset": setup.transform.offset.tolist(),
                                "clip": [float(c) for c in setup.transform.clip]},
            "timestamp": ts,
        }
        if d.enabled:
            extra["rank_rng_states"] = rng_states
        # `epoch` as the original: the last epoch finished (resume_epoch - 1 in both cases).
        write_checkpoint(files, is_best, lambda path: save_checkpoint(
            path, epoch=progress.epoch - 1, arch=cfg.model, model_state_dict=setup.model.state_dict(),
            optimizer_state_dict=optimizer.state_dict(), best_prec=progress.best_prec, extra=extra))

    stop = StopFlag()
    state = {"saved_step": progress.step, "skipped_seen": 0}

    def stopped_message(where: str) -> str:
        return (f"stopped by signal {stop.signum or signal.SIGTERM} {where}; "
                + (f"checkpoint written to {ckpt_path}; continue with --resume {ckpt_path}" if main
                   else f"rank 0 wrote the checkpoint (rank {d.rank})"))

    def epochs() -> None:
        while progress.epoch < cfg.epochs:
            e = progress.epoch
            t0 = time.perf_counter()
            status = "done"
            if progress.batch < len(train_loader):
                status = train_steps(setup, optimizer, train_loader, progress, max_steps=cfg.max_steps,
                                     stop=stop, desc=f"epoch {e}", dist=d,
                                     on_keys=lambda keys: trace("train", e, keys), labels=checks["train"])
            if status == "stopped":
                save(False)
                raise Interrupted(stop.signum or signal.SIGTERM,
                                  stopped_message(f"in epoch {e} after step {progress.step}"))
            dt = time.perf_counter() - t0
            loss_sum, loss_count = sum_over_ranks(d, [progress.loss_sum, progress.loss_count])
            train_loss = loss_sum / max(loss_count, 1)
            scalar("training", "loss", train_loss, e)
            line = f"epoch {e}/{cfg.epochs - 1}: train loss {train_loss:.6f} ({int(loss_count)} samples, {dt:.1f} s)"
            is_best = True
            if val_loader is not None:
                # DDP keeps BatchNorm statistics per rank; evaluate rank 0's, the ones saved.
                broadcast_state(d, setup.model, buffers_only=True)
                preds = predict_all(setup, val_loader, d, desc="validation",
                                    on_keys=lambda keys: trace("val", e, keys), labels=checks["val"])
                metrics = score(setup, preds)
                for tag, value in scalar_metrics(metrics).items():
                    scalar("val", tag, value, e)
                scalar("val", "loss", preds.loss, e)
                micro_f1 = float(metrics["microF1"])
                # As the original (strictly better micro-F1), and the first validated state is
                # kept even at micro-F1 0, so that a best checkpoint always exists.
                # (Only rank 0's answer matters: it alone writes and logs.)
                is_best = micro_f1 > progress.best_prec or (main and not storage.exists(best_path))
                progress.best_prec = max(progress.best_prec, micro_f1)
                line += (f"; val loss {preds.loss:.6f} microF1 {micro_f1:.4f} sampleF1 {metrics['sampleF1']:.4f} "
                         f"microPrec {metrics['microPrec']:.4f}" + (" (best)" if is_best else ""))
            # An epoch ends when its batches are done (fewer with --skip-bad-shards).
            if status == "done" or progress.batch >= len(train_loader):
                progress.epoch, progress.batch = e + 1, 0
                progress.loss_sum, progress.loss_count = 0.0, 0
            save(is_best)
            state["saved_step"] = progress.step
            skipped = _skipped(d, train_loader, val_loader)
            if len(skipped) > state["skipped_seen"]:
                line += f"; skipped so far: {len(skipped)} bad shard(s)/sample(s)"
                state["skipped_seen"] = len(skipped)
            log(line)
            sync()
            if agree_max(d, [stop.requested])[0]:
                raise Interrupted(stop.signum or signal.SIGTERM, stopped_message(f"after epoch {e}"))
            if status == "max_steps":
                log(f"reached --max-steps {cfg.max_steps}")
                return

    test_scores = None
    finished = False
    try:
        log(f"run {files.run} ({ts}): {cfg.model} on {where} ({setup.precision.name}), input {cfg.input} "
            f"({len(setup.bands)} channels), {cfg.label_type} {cfg.igbp} ({setup.rule.num_classes} classes); "
            f"train {per}"
            + (f", val {manifest.samples('val')}" if val_loader else ", no val split (the last epoch counts as best)"))
        if checkpoint is not None:
            log(f"resumed from {cfg.resume}: epoch {progress.epoch}, batch {progress.batch}, step {progress.step}")
        with stop.installed():
            try:
                epochs()
            except DataError as exc:
                # Raised on every rank at the same step (see _next_batch / predict_all).
                if progress.step > state["saved_step"]:  # steps since the last checkpoint are not lost
                    save(False)
                    raise DataError(f"{exc} (checkpoint of step {progress.step} written to {ckpt_path}; "
                                    f"continue with --resume {ckpt_path})") from exc
                raise
            if has_split(manifest, "test"):
                try:
                    best = best_path if not main or storage.exists(best_path) else ckpt_path
                    test_scores = _final_test(cfg, setup, best, files, log, stop, common, d, trace)
                except Interrupted as exc:  # training is complete: resuming its checkpoint runs the test
                    raise Interrupted(exc.signum, stopped_message("during the test evaluation")) from None
            else:
                log("no test split in the shard set: no test scores")
            finished = True
    finally:
        close_outputs(files, log, upload_errors=finished)
    for name, loader in (("train", train_loader), ("val", val_loader)):
        skipped = _skipped(d, loader) if loader is not None else []
        if skipped:
            log(f"{name}: skipped {len(skipped)} bad shard(s)/sample(s): " + "; ".join(skipped[:5]))
    log.sync()
    return RunResult(files.run.root, ts, ckpt_path, best_path, progress, test_scores)


def _final_test(cfg: TrainConfig, setup: Setup, best: str, files: RunFiles, log: RunLog,
                stop: StopFlag, common: dict[str, Any], d: Dist, trace: KeyTrace) -> dict[str, Any] | None:
    from .checkpoint import load_checkpoint, made_at

    # Rank 0 reads the checkpoint and sends the weights: other nodes need not see the run directory.
    if not broadcast_object(d, storage.exists(best) if d.is_main else None):
        log("no checkpoint was written (no training step): no test scores")
        return None
    epoch, made = None, ""
    if d.is_main:
        ckpt = load_checkpoint(best)
        load_model_weights(setup.model, ckpt, strict=True, source=best)
        epoch = ckpt.get("epoch")
        made = made_at(ckpt)
    broadcast_state(d, setup.model)
    test_loader = make_loader(cfg.loader, loader_spec(setup, cfg.shards, "test", train=False, **common))
    preds = predict_all(setup, test_loader, d, desc="test", stop=stop, on_keys=lambda keys: trace("test", "-", keys),
                        labels=label_check(test_loader, cfg.shards, "test", cfg.skip_bad_shards))
    metrics = score(setup, preds)
    skipped = _skipped(d, test_loader)
    if not d.is_main:
        return metrics
    scores, npz = write_scores(files.run.root, "test", metrics, preds, setup.rule)
    if files.events is not None:
        w = files.events.writer("test")
        for tag, value in scalar_metrics(metrics).items():
            w.add_scalar(tag, value, int(epoch or 0))
    key = "AverageAcc" if setup.rule.label_type == "single_label" else "OverallAcc"
    log(f"test ({len(preds.keys)} samples, {storage.basename(best)} {made}): "
        f"microF1 {metrics['microF1']:.4f} sampleF1 {metrics['sampleF1']:.4f} {key} {metrics[key]:.4f} "
        f"-> {scores}, {npz}")
    if skipped:
        log(f"test: skipped {len(skipped)} bad shard(s)/sample(s): " + "; ".join(skipped[:5]))
    return metrics


__all__ = ["fit", "predict", "predict_all", "score", "make_setup", "loader_spec", "Setup",
           "Predictions", "Progress", "RunResult", "Interrupted", "StopFlag", "KeyTrace", "check_resume_order",
           "train_steps"]
