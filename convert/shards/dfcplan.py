"""The DFC2020 part of a conversion plan: the contest's validation and test subsets go into the
splits `dfc2020_val` and `dfc2020_test`, with their dfc masks and without scene labels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from convert.shards.plan import PlanEntry, shuffle_order
from convert.shards.scan import Problem, Triplet
from sen12ms_common.errors import InputError
from sen12ms_common.format.manifest import DFC2020_SPLIT_OF, Rejection
from sen12ms_common.format.sample import SampleLayout
from sen12ms_common.vocab.patches import is_dfc2020, parse_any_patch


def dfc2020_layout(layout: SampleLayout) -> SampleLayout:
    """DFC2020 samples hold the conversion's s2 and s1 and the dfc mask (its lc is not needed:
    the mask is the 10 m one), no label."""
    modalities = tuple(m for m in layout.modalities if m in ("s2", "s1")) + ("dfc",)
    return replace(layout, modalities=modalities, labels=False)


def is_dfc2020_key(key: str) -> bool:
    try:
        return is_dfc2020(parse_any_patch(key))
    except InputError:
        return False


@dataclass
class DfcPlan:
    splits: dict[str, list[PlanEntry]] = field(default_factory=dict)  # in shard order
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[Rejection] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)


def plan_dfc2020(triplets: Iterable[Triplet], problems: Iterable[Problem], layout: SampleLayout,
                 seed: int) -> DfcPlan:
    """Each DFC2020 input (a triplet, or the id of a scan problem that made none) in the split
    of its subset: planned, or rejected for its missing siblings."""
    modalities = dfc2020_layout(layout).modalities
    out = DfcPlan(inputs=dict.fromkeys(DFC2020_SPLIT_OF.values(), 0))
    triplets = sorted(triplets, key=lambda t: t.key)
    keys = {t.key for t in triplets}
    by_id: dict[str, list[Problem]] = {}
    for p in problems:
        by_id.setdefault(p.id, []).append(p)
    for key, ps in sorted(by_id.items()):
        split = DFC2020_SPLIT_OF[parse_any_patch(key).season]
        if key in keys:  # the triplet converts all the same (e.g. an lc file in the wrong folder)
            out.warnings += [Rejection(key, p.reason, p.path, split) for p in ps]
        else:
            out.inputs[split] += 1
            out.rejected.append(Rejection(key, "; ".join(p.reason for p in ps), ps[0].path, split))
    planned: dict[str, dict[str, PlanEntry]] = {s: {} for s in out.inputs}
    for t in triplets:
        split = DFC2020_SPLIT_OF[t.id.season]
        out.inputs[split] += 1
        missing = [m for m in modalities if m not in t.paths]
        if missing:
            out.rejected.append(Rejection(t.key, "missing sibling " + ", ".join(t.id.relpath(m) for m in missing),
                                          t.paths.get("s2", ""), split))
        else:
            planned[split][t.key] = PlanEntry(t.key, split, {m: t.paths[m] for m in modalities}, ())
    out.splits = {s: [entries[k] for k in shuffle_order(list(entries), seed, s)] for s, entries in planned.items()}
    return out
