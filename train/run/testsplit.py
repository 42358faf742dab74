"""The test pass that ends a training run: the best checkpoint (rank 0 reads it, every rank gets
its weights) scored on the test split, its files written into the run folder and its line logged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sen12ms_common.storage import files as storage

from .checkpoint import load_checkpoint, load_model_weights, made_at
from .distributed import broadcast_object, broadcast_state
from .keylog import key_events
from .labelcheck import label_check
from .scoring import predict_all
from .setup import run_loader

if TYPE_CHECKING:
    from .loop import TrainingRun


def score_test(run: TrainingRun, best: str) -> dict[str, Any] | None:
    """The test split's metrics of the checkpoint `best` (collective), None where no checkpoint
    was written; rank 0 writes the task's test files and the TensorBoard scalars, and logs."""
    s, d = run.setup, run.dist
    # Rank 0 reads the checkpoint and sends the weights: other nodes need not see the run directory.
    if not broadcast_object(d, storage.exists(best) if d.is_main else None):
        run.log("no checkpoint was written (no training step): no test scores")
        return None
    epoch, made = None, ""
    if d.is_main:
        ckpt = load_checkpoint(best)
        load_model_weights(s.model, ckpt, strict=True, source=best)
        epoch, made = ckpt.get("epoch"), made_at(ckpt)
    broadcast_state(d, s.model)
    split = run.cfg.test_split
    loader = run_loader(run.cfg, s, d, split)
    result = predict_all(s, loader, d, desc=split, stop=run.stop, on_keys=key_events(d.rank, split, "-"),
                         labels=label_check(loader, run.cfg.shards, split, run.cfg.skip_bad_shards),
                         progress=run.progress)
    metrics = s.task.score(result)
    run.test_loss = result.loss
    skipped = run.skipped(loader)
    if not d.is_main:
        return metrics
    # The run's layout keeps its name whichever split tests it (test_scores.json, ...).
    written = s.task.write(run.files.run.root, "test", metrics, result)
    if run.files.events is not None:
        w = run.files.events.writer("test")
        for tag, value in s.task.scalars(metrics).items():
            w.add_scalar(tag, value, int(epoch or 0))
    run.log(f"{split} ({result.samples} samples, {storage.basename(best)} {made}): "
            f"{s.task.test_summary(metrics)} -> {', '.join(written)}")
    if skipped:
        run.log(f"{split}: skipped {len(skipped)} bad shard(s)/sample(s): " + "; ".join(skipped[:5]))
    return metrics
