"""What `convert shards` prints at the end: inputs = converted + rejected per split, the rejections
(one line for many that share a reason), and the verdict on a run that rejected too much."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from sen12ms_common.errors import InputError
from sen12ms_common.vocab.patches import parse_patch

# A path or name that mentions a patch: what differs between the reasons of two inputs.
_PATCH_WORD = re.compile(r"[^\s()'\"]*ROIs\d{4}_[a-z]+[^\s()'\";,]*")


def reason_pattern(reason: str) -> str:
    """A rejection reason with the patch names and paths in it replaced: equal for equal problems."""
    return _PATCH_WORD.sub("<patch>", reason)


def counted_rejections(report: dict[str, Any]) -> list[dict[str, str]]:
    """The rejections that count against --max-rejected: all but the known broken triplet, which
    the original leaves out too."""
    out = []
    for r in report["rejected"]:
        try:
            broken = parse_patch(r["id"]).is_known_broken
        except InputError:
            broken = False
        if not broken:
            out.append(r)
    return out


def common_reason(rejected: list[dict[str, str]]) -> tuple[int, dict[str, str]] | None:
    """(count, an example) of the most frequent kind of rejection; None if there is none."""
    if not rejected:
        return None
    counts = Counter(reason_pattern(r["reason"]) for r in rejected)
    pattern, n = counts.most_common(1)[0]
    return n, next(r for r in rejected if reason_pattern(r["reason"]) == pattern)


def verdict(report: dict[str, Any], max_rejected: float, report_url: str) -> str | None:
    """Why a finished run failed (nothing converted, or more than `max_rejected` of its inputs
    rejected), as one line; None when it did not."""
    inputs = sum(report["inputs"].values())
    converted = sum(report["converted"].values())
    counted = counted_rejections(report)
    if inputs == 0 or (converted and len(counted) <= max_rejected * inputs):
        return None
    common = common_reason(counted) or common_reason(report["rejected"])
    assert common is not None
    n, example = common
    rejected = len(report["rejected"])
    e_g = f"{example['id'] or example['path']}: {example['reason']}"
    if rejected == 1:
        why = e_g
    elif n == rejected:
        why = f"all {n} for the same reason, e.g. {e_g}"
    else:
        why = f"most often ({n} of them): {e_g}" if n > 1 else f"e.g. {e_g}"
    where = f"listed in {report_url}; no manifest was written"
    if not converted:
        return f"no sample converted: {rejected} of {inputs} inputs rejected, {why} ({where})"
    return (f"{len(counted)} of {inputs} inputs rejected ({len(counted) / inputs:.0%}), more than --max-rejected "
            f"{max_rejected:g} allows; {why} ({where}; if this is expected, run again with --resume --max-rejected 1)")


def report_table(r: dict[str, Any]) -> list[str]:
    """inputs = converted + rejected per split, and the total, as lines of a table."""
    inputs = r["inputs"]
    lines = [f"{'split':<11}{'inputs':>9}{'converted':>11}{'rejected':>10}"]
    for split in inputs:
        lines.append(f"{split:<11}{inputs[split]:>9}{r['converted'][split]:>11}{r['rejected_count'][split]:>10}")
    lines.append(f"{'total':<11}{sum(inputs.values()):>9}{sum(r['converted'].values()):>11}"
                 f"{sum(r['rejected_count'].values()):>10}")
    return lines


def rejection_lines(r: dict[str, Any], report_url: str, max_listed: int = 20) -> list[str]:
    rejected = r["rejected"]
    if not rejected:
        return []
    common = common_reason(rejected)
    if common is not None and len(rejected) > 1 and common[0] == len(rejected):
        d = common[1]
        return [f"rejected ({len(rejected)}), all for the same reason, e.g. [{d['split'] or '-'}] {d['id']}: "
                f"{d['reason']} (all listed in {report_url})"]
    lines = [f"rejected ({len(rejected)}):"]
    for d in rejected[:max_listed]:
        lines.append(f"  [{d['split'] or '-'}] {d['id']}: {d['reason']}")
    if len(rejected) > max_listed:
        lines.append(f"  ... and {len(rejected) - max_listed} more in {report_url}")
    return lines


def summary_lines(outcome: Any, max_listed: int = 20) -> list[str]:
    """The end of a successful run (`outcome`: a `convert.shards.conversion.Outcome`)."""
    m, r = outcome.manifest, outcome.report
    n_shards = sum(len(v) for v in m.splits.values())
    n_bytes = sum(s.bytes for v in m.splits.values() for s in v)
    rate = outcome.processed / outcome.seconds if outcome.seconds > 0 else 0.0
    lines = report_table(r) + rejection_lines(r, outcome.report_url, max_listed)
    if r["warnings"]:
        lines.append(f"warnings: {len(r['warnings'])} (listed in {outcome.report_url})")
    lines.append(f"wrote {n_shards} shards ({n_bytes / 1e6:.1f} MB) in {outcome.seconds:.1f} s "
                 f"({outcome.processed} samples processed, {rate:.1f} samples/s); manifest: {outcome.manifest_url}")
    return lines
