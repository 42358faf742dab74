"""One bench run: every measurement, interleaved by round, into one `Results`."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from bench.cases.conversion import conversion_repeat
from bench.cases.dali import DaliWorker
from bench.cases.loaders import (first_batch_check, original_repeat, seg_original_repeat, seg_webdataset_repeat,
                                 webdataset_repeat)
from bench.cases.s3rows import local_server, read_only_repeat, shards_url, tree_url, upload_bench_data
from bench.cases.training import StepBench, cuda_model_rate
from bench.inputs.dataset import (ensure_shards, geotiff_bytes, prepare, preread, real_patch_bytes, reference_root,
                                  shard_files)
from bench.measure.results import Results
from bench.measure.timing import Repeat, one_cpu, pinned
from bench.run.config import OUTPUTS, SEG_CODEC, BenchConfig, cores_configs
from sen12ms_common.cpus import usable_cpus
from sen12ms_common.datafiles.read import load_labels
from sen12ms_common.errors import UnavailableError
from sen12ms_common.format.manifest import load_manifest
from sen12ms_common.vocab.bands import resolve_bands

Case = tuple[str, Callable[[int], Repeat], list[Path]]  # key, run(round), files to pre-read


class Bench:
    def __init__(self, cfg: BenchConfig, echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.res = Results(cfg.repeats)
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        self.echo(f"[bench {time.perf_counter() - self.t0:6.0f} s] {msg}")

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> Results:
        cfg, res = self.cfg, self.res
        res.extra["load_start"] = os.getloadavg()
        res.extra["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.ds = prepare(cfg.data, cfg.dataset, echo=self.say, progress=cfg.progress)

        self.labels = load_labels(str(self.ds.labels))
        self.names = [k + ".tif" for k in self.ds.keys]
        for codec in cfg.codecs:
            ensure_shards(self.ds, codec, cfg.shard_size, usable_cpus(), echo=self.say, progress=cfg.progress)
        if SEG_CODEC in cfg.codecs:
            ensure_shards(self.ds, SEG_CODEC, cfg.shard_size, usable_cpus(), echo=self.say, progress=cfg.progress,
                          lc=True)
        res.extra["dataset"] = {"triplets": len(self.ds.keys), "subset": len(self.ds.subset_keys),
                                "real": self.ds.real}
        res.extra["config"] = {
            "quick": cfg.quick, "repeats": cfg.repeats, "codecs": list(cfg.codecs), "shard_size": cfg.shard_size,
            "input_spec": cfg.loader.input_spec, "channels": len(resolve_bands(cfg.loader.input_spec)),
            "batch_size": cfg.loader.batch_size,
            "label_type": cfg.loader.label_type, "train_model": cfg.training.model,
            "train_batch_size": cfg.training.batch_size, "warmup": cfg.training.warmup, "steps": cfg.training.steps}
        self.peer_roots: dict[str, Path] = {}
        if cfg.peers and cfg.wants("peer"):
            from bench.cases.peercases import prepare_peers  # start-up time: the peers' modules only when measured

            self.peer_roots = prepare_peers(self.ds, cfg.loader.input_spec, cfg.shard_size, usable_cpus(), res, self.say)
        elif not cfg.peers:
            res.fail("peer", "not available: switched off (--no-peers)")
        self.measure_bytes()
        for block, measure in (("conv", self.measure_conversion), ("loaders", self.measure_loaders),
                               ("gpu", self.measure_gpu_rate), ("train", self.measure_training),
                               ("s3", self.measure_s3 if cfg.s3 else None)):
            if block != "loaders" and not cfg.wants(block):
                res.fail(block, "not measured: --only")
            elif measure is None:
                res.fail(block, "not available: switched off (--no-s3)")
            else:
                measure()
        res.extra["load_end"] = os.getloadavg()
        res.extra["seconds"] = time.perf_counter() - self.t0
        return res

    # --- bytes per sample -------------------------------------------------------------------

    def measure_bytes(self) -> None:
        ds, res = self.ds, self.res
        n = len(ds.keys)
        res.put("bytes/geotiff/s1s2", 0, geotiff_bytes(ds, ds.keys, ("s2", "s1")) / n)
        res.put("bytes/geotiff/s1s2lc", 0, geotiff_bytes(ds, ds.keys, ("s2", "s1", "lc")) / n)
        for codec in self.cfg.codecs:
            m = load_manifest(str(ds.shards(codec)))
            entries = m.shards("train")
            res.put(f"bytes/shards/{codec}", 0, sum(e.bytes for e in entries) / sum(e.samples for e in entries))
        try:
            real = real_patch_bytes(reference_root() / "real", self.cfg.codecs)
        except Exception as exc:  # the reference folder is checked by `prepare` already
            res.fail("bytes/real", f"failed: {exc}")
        else:
            for key, value in real.items():
                res.put(key, 0, value)

    # --- conversion -------------------------------------------------------------------------

    def measure_conversion(self) -> None:
        cfg, res = self.cfg, self.res
        for r in range(cfg.repeats):
            for codec in cfg.codecs:
                for label, workers, cpu_of in cores_configs():
                    key = f"conv/{codec}/{label}"
                    out = cfg.scratch / "convert" / f"{codec}-{label}"
                    try:
                        rep = conversion_repeat(self.ds, out, codec, workers, cpu_of(r), cfg.shard_size)
                    except Exception as exc:
                        res.fail(key, f"failed: {_one_line(exc)}")
                        continue
                    res.put(key, r, rep.rate)
                    self.say(f"round {r + 1}/{cfg.repeats} convert {codec:4} {label} core(s): "
                             f"{rep.rate:.1f} samples/s")

    # --- loaders ----------------------------------------------------------------------------

    def loader_cases(self) -> list[Case]:
        """(key, run(round) -> Repeat, files to pre-read) of every loader row."""
        cfg, ds, st = self.cfg, self.ds, self.cfg.loader
        cases: list[Case] = []

        def case(key: str, files: list[Path], cpu_of: Callable[[int], int | None], fn: Callable[[int], Repeat]) -> None:
            def run(r: int) -> Repeat:
                with pinned(cpu_of(r)):
                    return fn(r)
            cases.append((key, run, files))

        for label, workers, cpu_of in cores_configs():
            case(f"orig/{label}", ds.files(ds.keys), cpu_of,
                 lambda r, w=workers: original_repeat(str(ds.tree), self.names, self.labels, st, w, seed=r))
        if SEG_CODEC in cfg.codecs:
            self.segmentation_cases(case)
        for codec in cfg.codecs:
            self.codec_cases(codec, case, cases.append)
            self.one_core_cases(codec, case)
        if self.peer_roots:
            from bench.cases.peercases import peer_cases  # start-up time: the peers' modules only when measured

            peer_cases(ds, self.peer_roots, st.input_spec, st.batch_size, cfg.scratch / "peer-cache", case)
        return [c for c in cases if cfg.wants(c[0])]

    def codec_cases(self, codec: str, case: Callable, add: Callable[[Case], None]) -> None:
        """Our loader on the shards of `codec` in each way of using the cores: each output, the other
        way than the default, and DALI (pinned by its own process, so `add`ed as it is)."""
        st = self.cfg.loader
        root = str(self.ds.shards(codec))
        files = shard_files(self.ds.shards(codec))
        for label, n, cpu_of in cores_configs():
            for output in OUTPUTS:
                if output == "uint16-noverify" and label != "1":
                    continue  # the cost of verification shows on one core
                case(f"wds/{codec}/{output}/{label}", files, cpu_of,
                     lambda r, output=output: webdataset_repeat(
                         root, st, "auto", seed=r, to_float=output == "float", verify=output != "uint16-noverify"))
            # The other way of using the cores than the default (--workers auto): one worker
            # process on one core, reading threads on several.
            case(f"alt/{codec}/uint16/{label}", files, cpu_of,
                 lambda r, n=n: webdataset_repeat(root, st, 1 if n == 1 else 0, seed=r, to_float=False,
                                                  threads=1 if n == 1 else n))
            if self.dali is not None:
                add((f"dali/{codec}/{label}", lambda r, n=n, cpu_of=cpu_of: self.dali.repeat(
                    root, st, n, seed=r, cpu=cpu_of(r)), files))

    def one_core_cases(self, codec: str, case: Callable) -> None:
        """The rows on one core beside ours on `codec`: the front door, a stock webdataset pipeline,
        rgb and augmented batches (zstd), the memory-copy floor (none) and the codec's limit."""
        from bench.cases.frontdoor import EPOCHS as door_epochs  # start-up time: torch only when used
        from bench.cases.frontdoor import WORKERS as door_workers  # start-up time: torch only when used
        from bench.cases.frontdoor import dataset_repeat, native_key  # start-up time: torch only when used
        from bench.cases.frontdoor import key as door_key  # start-up time: torch only when used
        from bench.cases.stock import floor_repeat, limit_repeat, stock_repeat  # start-up time: numba only when used

        st = self.cfg.loader
        root = str(self.ds.shards(codec))
        files = shard_files(self.ds.shards(codec))
        # The native loader's reference for the front door, measured right before it (one worker process).
        case(native_key(codec), files, one_cpu, lambda r: webdataset_repeat(root, st, 1, seed=r, to_float=False,
                                                                            epochs=door_epochs))
        for w in door_workers:
            case(door_key(codec, w), files, one_cpu, lambda r, w=w: dataset_repeat(root, st, w, seed=r))
        case(f"stock/{codec}/1", files, one_cpu, lambda r: stock_repeat(root, st.input_spec, st.batch_size, r))
        if codec == "zstd":
            rgb = replace(st, input_spec="rgb")
            case("rgb/zstd/uint16/1", files, one_cpu,
                 lambda r: webdataset_repeat(root, rgb, 0, seed=r, to_float=False, threads=1))
            case("aug/zstd/uint16/1", files, one_cpu, lambda r: webdataset_repeat(
                root, st, 0, seed=r, to_float=False, threads=1, augment=True))
            case("aug/zstd/float/1", files, one_cpu, lambda r: webdataset_repeat(
                root, st, 0, seed=r, to_float=True, threads=1, augment=True))
        if codec == "none":
            case("floor/none", files, one_cpu, lambda r: floor_repeat(root, st.input_spec, st.batch_size))
        case(f"limit/{codec}", files, one_cpu, lambda r: limit_repeat(root, st.input_spec, st.batch_size))

    def segmentation_cases(self, case: Callable) -> None:
        """Image + mask batches: the DFC2020 baseline's way (GeoTIFFs) and ours (shards with lc)."""
        ds, st = self.ds, self.cfg.loader
        seg_root = ds.shards(SEG_CODEC, lc=True)
        tree_files = ds.files(ds.keys, ("s2", "s1", "lc"))
        for label, n, cpu_of in cores_configs():
            case(f"seg/orig/{label}", tree_files, cpu_of,
                 lambda r, w=n: seg_original_repeat(str(ds.tree), ds.keys, st, w, seed=r))
            case(f"seg/wds/{label}", shard_files(seg_root), cpu_of,
                 lambda r: seg_webdataset_repeat(str(seg_root), st, seed=r))

    def start_dali(self) -> None:
        self.dali = None
        if not self.cfg.dali:
            self.res.fail("dali", "not available: switched off (--no-dali)")
            return
        if not self.cfg.wants("dali"):
            self.res.fail("dali", "not measured: --only")
            return

        try:
            self.dali = DaliWorker(self.cfg.scratch / "dali-worker.log")
            self.res.extra["dali_version"] = self.dali.version
        except UnavailableError as exc:
            self.res.fail("dali", f"not available: {exc}")

    def measure_loaders(self) -> None:
        cfg, res = self.cfg, self.res
        try:
            res.extra["same_input_check"] = first_batch_check(str(self.ds.tree), self.names, self.labels,
                                                              str(self.ds.shards(cfg.codecs[0])), cfg.loader)
        except Exception as exc:
            res.extra["same_input_check"] = f"failed: {_one_line(exc)}"
        self.start_dali()
        try:
            cases = self.loader_cases()
            for r in range(cfg.repeats):
                k = r % len(cases)
                for key, run, files in cases[k:] + cases[:k]:
                    if key in res.missing:
                        continue
                    preread(files)
                    try:
                        rep = run(r)
                    except Exception as exc:
                        res.fail(key, f"failed: {_one_line(exc)}")
                        self.say(f"round {r + 1}/{cfg.repeats} {key}: FAILED {_one_line(exc)}")
                        continue
                    res.put(key, r, rep.rate)
                    self.say(f"round {r + 1}/{cfg.repeats} {key:28} {rep.rate:8.1f} samples/s "
                             f"(start-up {rep.startup_s:.1f} s, not counted)")
        finally:
            if self.dali is not None:
                self.dali.close()

    # --- the GPU to feed --------------------------------------------------------------------

    def measure_gpu_rate(self) -> None:
        """Model-alone samples/s of the training model on a CUDA device (AMP, channels_last), or
        the planning figure `--gpu-rate`: what one GPU consumes, for the cores-per-GPU rows."""
        cfg, res = self.cfg, self.res
        try:
            rate, name = cuda_model_rate(cfg.training.model, cfg.loader.input_spec)
        except Exception as exc:
            rate, name = None, f"failed: {_one_line(exc)}"
        if rate is not None:
            res.put("gpu/rate", 0, rate)
            res.extra["gpu"] = f"measured on {name}"
        elif cfg.gpu_rate:
            res.put("gpu/rate", 0, cfg.gpu_rate)
            res.extra["gpu"] = f"planning figure --gpu-rate {cfg.gpu_rate:g} (no CUDA device here: {name})"
        else:
            res.fail("gpu", f"not available: {name}; pass --gpu-rate N to plan for a GPU")

    # --- training ---------------------------------------------------------------------------

    def measure_training(self) -> None:
        cfg, res = self.cfg, self.res
        codec = "zstd" if "zstd" in cfg.codecs else cfg.codecs[0]
        try:
            sb = StepBench(str(self.ds.shards(codec)), cfg.loader, cfg.training)
        except Exception as exc:
            res.fail("train", f"failed: {_one_line(exc)}")
            return
        res.extra["train_device"] = _device_name(sb.device)
        res.extra["train_codec"] = codec
        res.extra["train_model"] = cfg.training.model
        shard_list = shard_files(self.ds.shards(codec))
        tree_files = self.ds.files(self.ds.keys)
        # The model-alone steps bracket the fed ones in every round (before and after, averaged):
        # the load of a shared machine drifts within minutes, and the stall is a small difference.
        cases: list[tuple[str, Callable[[int], float], list[Path]]] = [
            ("train/synthetic-before", lambda r: sb.synthetic(), []),
            ("train/ours", lambda r: sb.fed_by_ours(r), shard_list),
            ("train/original", lambda r: sb.fed_by_original(str(self.ds.tree), self.names, self.labels, r), tree_files),
            ("train/synthetic-after", lambda r: sb.synthetic(), []),
        ]
        for r in range(cfg.repeats):
            for key, run, files in cases:
                preread(files)
                try:
                    seconds = run(r)
                except Exception as exc:
                    res.fail(key.split("-")[0], f"failed: {_one_line(exc)}")
                    continue
                res.put(key, r, seconds)
                self.say(f"round {r + 1}/{cfg.repeats} {key:22} {seconds:.2f} s/step")
            around = [res.values.get(f"train/synthetic-{w}", [None] * cfg.repeats)[r] for w in ("before", "after")]
            if all(v is not None for v in around):
                res.put("train/synthetic", r, (around[0] + around[1]) / 2)

    # --- object storage ---------------------------------------------------------------------

    def measure_s3(self) -> None:
        cfg, res, ds = self.cfg, self.res, self.ds
        codec = "zstd"
        shard_dir = cfg.scratch / "convert" / f"{codec}-{usable_cpus()}"
        try:
            if not (shard_dir / "manifest.json").is_file():
                conversion_repeat(ds, shard_dir, codec, usable_cpus(), None, cfg.shard_size)
            with local_server(cfg.scratch / "s3") as server:
                t = time.perf_counter()
                nbytes = upload_bench_data(server, shard_dir, ds.tree, ds.subset_keys)
                self.say(f"s3: uploaded {nbytes / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s")
                names = [k + ".tif" for k in ds.subset_keys]
                surl, turl = shards_url(server), tree_url(server)
                cases: list[tuple[str, Callable[[int], Repeat]]] = [("s3/read", lambda r: read_only_repeat(surl))]
                for label, workers, _ in cores_configs():
                    cases.append((f"s3/ours/{label}", lambda r, w=workers: webdataset_repeat(
                        surl, cfg.loader, w, seed=r, to_float=True)))
                    cases.append((f"s3/orig/{label}", lambda r, w=workers: original_repeat(
                        turl, names, self.labels, cfg.loader, w, seed=r)))
                for r in range(cfg.repeats):
                    for key, run in cases:
                        try:
                            rep = run(r)
                        except Exception as exc:
                            res.fail(key, f"failed: {_one_line(exc)}")
                            continue
                        res.put(key, r, rep.rate)
                        self.say(f"round {r + 1}/{cfg.repeats} {key:16} {rep.rate:8.1f} samples/s")
        except UnavailableError as exc:
            res.fail("s3", f"not available: {exc}")
        except Exception as exc:
            res.fail("s3", f"failed: {_one_line(exc)}")


def _device_name(device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def run_bench(cfg: BenchConfig, echo: Callable[[str], None] | None = None) -> Results:
    return Bench(cfg, echo).run()
