"""Run by test_distributed under torchrun: a rank that exchanges messages, shuts down while it
still holds its `Dist` (as `train.evaluate` and `train` do), and prints the gloo threads that
are left: none may outlive `shutdown` into interpreter finalization."""

from __future__ import annotations

import json
import os

from train.run.distributed import agree_max, gather_objects, init_from_env, shutdown


def gloo_threads() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # a thread that ended meanwhile
            continue
    return sorted(n for n in names if "gloo" in n)


if __name__ == "__main__":
    d, _ = init_from_env("cpu")
    import train.models.registry  # noqa: F401  (as the commands do once the group exists: torchvision, torch.distributed.nn)

    gathered = gather_objects(d, {"rank": d.rank})
    agree_max(d, [d.rank])
    during = gloo_threads()
    shutdown(d)
    print(json.dumps({"rank": d.rank, "gathered": gathered, "during": during, "after": gloo_threads()}), flush=True)
