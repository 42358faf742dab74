"""`python -m bench.cases.daliworker`: runs DALI loader repeats for the bench in a process of its own."""

from __future__ import annotations

import json
import os
import sys
import traceback

from bench.cases.loaders import LoaderSettings, webdataset_spec
from bench.measure.timing import pinned, steady_rate


def _answer(out, obj: dict) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def run_request(req: dict) -> dict:
    from train.data.dali import DaliLoader  # optional extra (dali): imported where it is used

    settings = LoaderSettings(**req["settings"])
    spec = webdataset_spec(req["root"], settings, req["threads"], req["seed"])
    with pinned(req.get("cpu")):
        loader = DaliLoader(spec, normalise=req.get("normalise", True), num_threads=req["threads"], device_id=None)
        try:
            rep = steady_rate(loader.epoch(req["seed"]), lambda b: len(b["key"]))
        finally:
            loader.close()
    return {"ok": True, "items": rep.items, "seconds": rep.seconds, "startup_s": rep.startup_s}


def main() -> None:
    # Answers go to the real stdout; DALI, numba and warnings print to stderr only.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        import nvidia.dali as dali  # optional extra (dali): imported where it is used

        import train.data.dali  # noqa: F401  (the loader itself must import too)
    except Exception as exc:  # ImportError, or a broken installation
        _answer(out, {"ready": False, "error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        return
    _answer(out, {"ready": True, "version": dali.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            _answer(out, run_request(json.loads(line)))
        except Exception as exc:
            traceback.print_exc()
            text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            _answer(out, {"ok": False, "error": f"{exc.__class__.__name__}: {text}"})


if __name__ == "__main__":
    main()
