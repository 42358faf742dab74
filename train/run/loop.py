"""A training run: open the run folder, train epoch by epoch (validate, checkpoint), test the best.

`TrainingRun.open` builds everything a run needs; `TrainingRun.run` trains and tests. One epoch
is `run_epoch`; where the run stands is `RunState` (saved in every checkpoint). What is specific
to the learning task is the setup's `Task`. Layout of the run folder and exact resume: see
docs/training.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from sen12ms_common.errors import DataError, Interrupted
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.storage import files as storage
from sen12ms_common.storage.outputs import writing

from ..config.trainconfig import TrainConfig
from ..data import Loader
from ..tasks.registry import task_options
from .distributed import (Dist, agree_max, broadcast_state, gather_objects, rank_seed, sum_over_ranks,
                          wrap_model)
from .divergence import diverged, finite_state
from .init_weights import start_weights
from .keylog import key_events
from .labelcheck import LabelCheck, label_check
from .optimizers import make_optimizer
from .outputs import RunDir, RunFiles, RunLog, close_outputs, open_run
from .progress import Plan, ProgressMeter, ProgressOptions
from .report import CURVES_PNG, METRICS_CSV, EpochRecord, MetricsTable, summary_lines
from .resume import restore
from .save import save_run_checkpoint
from .scoring import predict_all
from .setup import Setup, check_modalities, has_split, make_setup, run_loader, seed_everything
from .signals import StopFlag
from .steps import RunState, train_steps
from .tblog_images import ValImages, step_validation
from .testsplit import score_test

Echo = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: str  # local path or s3:// URL, as the checkpoints below
    timestamp: str
    checkpoint: str
    best: str
    state: RunState
    test_scores: dict[str, Any] | None


@dataclass
class TrainingRun:
    cfg: TrainConfig
    dist: Dist
    setup: Setup
    optimizer: torch.optim.Optimizer
    state: RunState
    train_loader: Loader
    val_loader: Loader | None
    checks: dict[str, LabelCheck]
    files: RunFiles
    log: RunLog
    stop: StopFlag
    resumed: bool
    progress: ProgressOptions
    table: MetricsTable       # the rows of metrics.csv (rank 0)
    saved_step: int = 0     # the step of the last checkpoint written
    skipped_seen: int = 0   # bad shards / samples already reported in an epoch line
    val_seconds: float = 0.0  # how long the last validation took (for the run's ETA)
    test_loss: float | None = None
    images: ValImages | None = None  # the validation patches shown in TensorBoard (rank 0, segmentation)

    @classmethod
    def open(cls, cfg: TrainConfig, checkpoint: Mapping[str, Any] | None = None, echo: Echo = print, *,
             dist: Dist | None = None, device: str | None = None,
             progress: ProgressOptions = ProgressOptions()) -> "TrainingRun":
        """Everything a run needs, the run folder opened last: what fails before leaves nothing behind.
        `checkpoint`: the loaded `cfg.resume`; `dist`: this process's place under torchrun; `device`:
        its device (default `cfg.device`); `progress`: how the passes show how far they are. The
        keys of every batch go to `keylog.KEYS_LOG`."""
        d = dist or Dist()
        log = RunLog(echo if d.is_main else None)
        seed_everything(cfg.seed)
        RunDir(cfg.resolved_run_dir())  # an unusable --run-dir fails before anything is loaded
        manifest = load_manifest(cfg.shards)
        check_modalities(manifest, cfg.bands, cfg.shards, "train", "choose another --input")
        setup = make_setup(shards=cfg.shards, model_name=cfg.model, input_spec=cfg.bands, label_type=cfg.label_type,
                           igbp=cfg.igbp, threshold=cfg.threshold, stats=cfg.stats, device=device or cfg.device,
                           amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile, task=cfg.task,
                           task_options=task_options(cfg.task, cfg.to_dict()), manifest=manifest)
        if checkpoint is None:  # --pretrained-backbone, --init-from (a resumed run has its own weights)
            start_weights(cfg, setup.model, log)
        if d.rank > 0:  # same initial weights everywhere (seeded above), own dropout draws per rank
            torch.manual_seed(rank_seed(cfg.seed, d.rank))
        optimizer = make_optimizer(cfg.optimizer, setup.model, cfg.lr, cfg.decay)
        state = RunState()
        ts = restore(checkpoint, cfg, setup, optimizer, state, d) if checkpoint is not None else None
        # After loading: DDP starts every rank from rank 0's weights.
        setup.train_forward = wrap_model(setup.forward, setup.device, d)
        train_loader = run_loader(cfg, setup, d, "train")
        if len(train_loader) == 0:
            raise DataError(f"{cfg.shards}: no train samples in this shard set"
                            + (f" for each of {d.world_size} processes" if d.enabled else ""))
        val_loader = run_loader(cfg, setup, d, cfg.val_split) if has_split(setup.manifest, cfg.val_split) else None
        checks = {name: label_check(loader, cfg.shards, name, cfg.skip_bad_shards)
                  for name, loader in (("train", train_loader), ("val", val_loader)) if loader is not None}
        images = (ValImages.take(val_loader, cfg.tb_images) if d.is_main and val_loader is not None
                  and cfg.tb_images > 0 and setup.task.targets == "mask" else None)
        files = open_run(cfg, ts, d, log)
        table = MetricsTable(files.run.join(METRICS_CSV), files.ts)
        if d.is_main and checkpoint is not None:
            problem = table.carry_over(state.epoch)
            if problem:
                log(f"warning: {problem}")
        return cls(cfg, d, setup, optimizer, state, train_loader, val_loader, checks, files, log,
                   StopFlag(), checkpoint is not None, progress, table,
                   saved_step=state.step, images=images)

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train the remaining epochs, then score the best checkpoint on the test split."""
        test_scores, finished = None, False
        try:
            self.log(self.start_line())
            if self.resumed:
                # Epochs are shown counted from 1 (`epoch 1/20`); the checkpoint counts from 0.
                self.log(f"resumed from {self.cfg.resume}: epoch {self.state.epoch + 1}, batch {self.state.batch}, "
                         f"step {self.state.step}")
            with self.stop.installed():
                self.train()
                test_scores = self.test()
                self.log_summary(test_scores)
                finished = True
        finally:
            close_outputs(self.files, self.log, upload_errors=finished)
        for name, loader in (("train", self.train_loader), ("val", self.val_loader)):
            skipped = self.skipped(loader) if loader is not None else []
            if skipped:
                self.log(f"{name}: skipped {len(skipped)} bad shard(s)/sample(s): " + "; ".join(skipped[:5]))
        self.log.sync()
        f = self.files
        return RunResult(f.run.root, f.ts, f.checkpoint, f.best, self.state, test_scores)

    def start_line(self) -> str:
        cfg, d, s, loader = self.cfg, self.dist, self.setup, self.train_loader
        where = f"{d.world_size} processes ({d.backend}), {s.device} on rank 0" if d.enabled else str(s.device)
        per = f"{loader.samples} samples = {len(loader)} batches/epoch"
        if d.enabled:
            per += f" on each of {d.world_size} ranks ({s.manifest.samples('train')} in the split)"
        val = (f", {cfg.val_split} {s.manifest.samples(cfg.val_split)}" if self.val_loader
               else f", no {cfg.val_split} split (the last epoch counts as best)")
        what = (f"{cfg.label_type} {cfg.igbp}" if s.task.name == "classification"
                else f"{s.task.name}" + (" without savanna" if cfg.no_savanna else ""))
        return (f"run {self.files.run} ({self.files.ts}): {cfg.model} on {where} ({s.precision.name}), input "
                f"{cfg.input} ({len(s.bands)} channels), {what} ({s.task.num_classes} classes); "
                f"train {per}{val}")

    def train(self) -> None:
        """The remaining epochs. A data error (raised on every rank at the same step) writes a
        checkpoint first when steps were trained since the last one."""
        try:
            while self.state.epoch < self.cfg.epochs:
                if self.run_epoch() == "max_steps":
                    self.log(f"reached --max-steps {self.cfg.max_steps}")
                    return
        except DataError as exc:
            if self.state.step > self.saved_step:  # steps since the last checkpoint are not lost
                self.save(False)
                ckpt = self.files.checkpoint
                raise DataError(f"{exc} (checkpoint of step {self.state.step} written to {ckpt}; "
                                f"continue with --resume {ckpt})") from exc
            raise

    def run_epoch(self) -> str:
        """Train the rest of the current epoch, validate, checkpoint, log: 'done' or 'max_steps'."""
        state, e = self.state, self.state.epoch
        t0 = time.perf_counter()
        status = self.train_part(e)
        seconds = time.perf_counter() - t0
        loss_sum, loss_count = self.sum_loss()
        record = EpochRecord(e, state.step, loss_sum / max(loss_count, 1), int(loss_count), seconds, best=True)
        if not finite_state(self.setup.model, record.train_loss):
            raise self.diverged(e, record.train_loss)
        self.scalar("training", "loss", record.train_loss, e)
        line = (f"epoch {e + 1}/{self.cfg.epochs}: train loss {record.train_loss:.6f} ({record.train_samples} samples, "
                f"{seconds:.1f} s)")
        if self.val_loader is not None:
            line += self.validate(e, record)
        # An epoch ends when its batches are done (fewer with --skip-bad-shards).
        if status == "done" or state.batch >= len(self.train_loader):
            state.epoch, state.batch = e + 1, 0
            state.loss_sum, state.loss_count = 0.0, 0
        self.save(record.best)
        self.saved_step = state.step
        self.write_record(record)
        self.log(line + self.skipped_note())
        self.sync()
        if agree_max(self.dist, [self.stop.requested])[0]:
            raise self.interrupted(f"after epoch {e + 1}")
        return status

    def diverged(self, e: int, loss: float) -> Exception:
        return diverged(e, self.state.step, loss, self.cfg.lr, self.files.checkpoint, self.saved_step)

    def train_part(self, e: int) -> str:
        """The steps of epoch `e` not yet trained: 'done' or 'max_steps'; a stop request writes
        the checkpoint and ends the run."""
        if self.state.batch >= len(self.train_loader):
            return "done"
        meter = ProgressMeter(self.progress, f"epoch {e + 1}/{self.cfg.epochs}", self.epoch_plan(),
                              main=self.dist.is_main)
        try:
            status = train_steps(self.setup, self.optimizer, self.train_loader, self.state,
                                 max_steps=self.cfg.max_steps, stop=self.stop, dist=self.dist,
                                 on_keys=key_events(self.dist.rank, "train", e), labels=self.checks["train"],
                                 meter=meter, on_step=self.on_step)
        except RuntimeError as exc:  # an optimizer's step past float32 ("cannot be converted ... overflow")
            if "overflow" not in str(exc):
                raise
            raise self.diverged(e, math.inf) from exc
        if status == "stopped":
            self.save(False)
            raise self.interrupted(f"in epoch {e + 1} after step {self.state.step}")
        return status

    def on_step(self, loss: float) -> None:
        """After every optimizer step: its loss in TensorBoard; every --val-every-steps steps a
        validation (collective: every rank reaches the same step)."""
        step, n = self.state.step, self.cfg.val_every_steps
        if self.files.events is not None:
            self.files.events.writer("training").add_scalar("loss_step", loss, step)
        if n and step % n == 0 and self.val_loader is not None and self.state.batch < len(self.train_loader):
            step_validation(self, step)

    def write_images(self, step: int) -> None:
        if self.images is not None and self.files.events is not None:
            self.images.write(self.files.events.writer("images"), self.setup, step)

    def epoch_plan(self) -> Plan:
        """The batches left in this epoch and the later ones (within --max-steps), and the
        validations still to come, for the progress lines' ETAs."""
        n, s, cfg = len(self.train_loader), self.state, self.cfg
        now, later = n - s.batch, (cfg.epochs - s.epoch - 1) * n
        if cfg.max_steps is not None:
            budget = max(cfg.max_steps - s.step, 0)
            now = min(now, budget)
            later = min(later, budget - now)
        validations = 1 + math.ceil(later / max(n, 1)) if self.val_loader is not None else 0
        return Plan(total=n, initial=s.batch, end=s.batch + now, later_batches=later,
                    later_seconds=validations * self.val_seconds, run_eta=True, unit="step")

    def validate(self, e: int, record: EpochRecord) -> str:
        """Score the val split into `record` (whether this is the best state so far, too); the
        epoch line's part."""
        s, d, task = self.setup, self.dist, self.setup.task
        t0 = time.perf_counter()
        # DDP keeps BatchNorm statistics per rank; evaluate rank 0's, the ones saved.
        broadcast_state(d, s.model, buffers_only=True)
        result = predict_all(s, self.val_loader, d, desc="validation", on_keys=key_events(self.dist.rank, "val", e),
                             labels=self.checks["val"], progress=self.progress)
        self.val_seconds = time.perf_counter() - t0
        try:
            metrics = task.score(result)
        except ValueError as exc:  # "probabilities hold NaN or infinity": outputs overflowed
            raise self.diverged(e, result.loss) from exc
        record.val_loss, record.val = result.loss, task.scalars(metrics)
        for tag, value in record.val.items():
            self.scalar("val", tag, value, e)
        self.scalar("val", "loss", result.loss, e)
        self.write_images(self.state.step)
        value = float(metrics[task.best_metric])
        # As the original (strictly better), and the first validated state is kept even at 0, so
        # that a best checkpoint always exists. (Only rank 0's answer matters: it alone writes.)
        record.best = value > self.state.best_prec or (d.is_main and not storage.exists(self.files.best))
        self.state.best_prec = max(self.state.best_prec, value)
        return f"; val loss {result.loss:.6f} {task.val_summary(metrics)}" + (" (best)" if record.best else "")

    def test(self) -> dict[str, Any] | None:
        """Score the best checkpoint (the last one without a val split) on the test split."""
        if not has_split(self.setup.manifest, self.cfg.test_split):
            self.log(f"no {self.cfg.test_split} split in the shard set: no test scores")
            return None
        best = self.files.best
        if self.dist.is_main and not storage.exists(best):
            best = self.files.checkpoint
        try:
            return score_test(self, best)
        except Interrupted as exc:  # training is complete: resuming its checkpoint runs the test
            raise Interrupted(exc.signum, self.stop_message("during the test evaluation")) from None

    # --- helpers ---------------------------------------------------------------------------

    def save(self, is_best: bool) -> None:
        """Checkpoint (collective: every rank calls it at the same point; rank 0 writes)."""
        save_run_checkpoint(self.cfg, self.setup, self.optimizer, self.state, self.files, self.dist, is_best)

    def sum_loss(self) -> tuple[float, float]:
        """The epoch's loss sum and sample count over every rank (collective)."""
        loss_sum, loss_count = sum_over_ranks(self.dist, [self.state.loss_sum, self.state.loss_count])
        return loss_sum, loss_count

    def write_record(self, record: EpochRecord) -> None:
        """metrics.csv and the training curves, rewritten after every epoch (rank 0)."""
        if not self.dist.is_main:
            return
        self.table.add(record)
        cfg, run = self.cfg, self.files.run
        what = f"{cfg.label_type} {cfg.igbp}" if cfg.task == "classification" else cfg.task
        title = f"{cfg.model}, input {cfg.input}, {what} ({self.files.ts})"
        with writing(run.root):
            self.table.write()
            storage.write_bytes(run.join(CURVES_PNG), self.table.curves_png(self.setup.task.summary_metrics[:4], title))

    def log_summary(self, test_scores: dict[str, Any] | None) -> None:
        """The summary table at the end of the run (rank 0)."""
        if not self.dist.is_main:
            return
        best, task = self.table.best(), self.setup.task
        if best is not None and task.best_metric in best.val:
            head = f"summary: best epoch {best.epoch + 1} (val {task.best_metric} {best.val[task.best_metric]:.4f})"
        else:
            head = "summary: no validation (the last epoch's checkpoint counts as best)"
        self.log(f"{head}; per epoch: {self.files.run.join(METRICS_CSV)}, {self.files.run.join(CURVES_PNG)}")
        test = (test_scores, self.test_loss) if test_scores is not None and self.test_loss is not None else None
        for line in summary_lines(task, best, test, self.cfg.test_split):
            self.log(line)

    def skipped_note(self) -> str:
        """The epoch line's note of bad shards or samples skipped since the last one (collective)."""
        skipped = self.skipped(self.train_loader, self.val_loader)
        if len(skipped) <= self.skipped_seen:
            return ""
        self.skipped_seen = len(skipped)
        return f"; skipped so far: {len(skipped)} bad shard(s)/sample(s)"

    def scalar(self, split: str, tag: str, value: float, epoch: int) -> None:
        if self.files.events is not None:
            self.files.events.scalar(split, tag, value, epoch)

    def sync(self) -> None:
        self.log.sync()
        if self.files.events is not None:
            self.files.events.sync()

    def skipped(self, *loaders: Loader | None) -> list[str]:
        """What the loaders of every rank skipped so far, each problem once (collective)."""
        mine = [s for loader in loaders if loader is not None for s in loader.skipped]
        return list(dict.fromkeys(s for part in gather_objects(self.dist, mine) for s in part))

    def stop_message(self, where: str) -> str:
        ckpt = self.files.checkpoint
        return (f"stopped by signal {self.stop.signal} {where}; "
                + (f"checkpoint written to {ckpt}; continue with --resume {ckpt}" if self.dist.is_main
                   else f"rank 0 wrote the checkpoint (rank {self.dist.rank})"))

    def interrupted(self, where: str) -> Interrupted:
        return Interrupted(self.stop.signal, self.stop_message(where))


def fit(cfg: TrainConfig, checkpoint: Mapping[str, Any] | None = None, echo: Echo = print, *,
        dist: Dist | None = None, device: str | None = None,
        progress: ProgressOptions = ProgressOptions()) -> RunResult:
    """Train as `python -m train` does; returns where everything went (see `TrainingRun.open`)."""
    return TrainingRun.open(cfg, checkpoint, echo, dist=dist, device=device,
                            progress=progress).run()


__all__ = ["TrainingRun", "RunResult", "fit"]
