"""What one bench run measured: figures per repeat (aligned by round, so that ratios are taken
within a round), rows of the table, and why a row could not be measured."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from bench.measure.timing import Stat


@dataclass
class Results:
    repeats: int
    values: dict[str, list[float | None]] = field(default_factory=dict)  # key -> value per round
    missing: dict[str, str] = field(default_factory=dict)  # key -> "not available: ..." / "failed: ..."
    extra: dict[str, object] = field(default_factory=dict)  # single facts (versions, checks)

    def dumps(self) -> str:
        return json.dumps({"repeats": self.repeats, "values": self.values, "missing": self.missing,
                           "extra": self.extra}, indent=1, default=str) + "\n"

    @classmethod
    def loads(cls, text: str) -> "Results":
        d = json.loads(text)
        return cls(int(d["repeats"]), d["values"], d["missing"], d["extra"])

    def put(self, key: str, round_: int, value: float) -> None:
        self.values.setdefault(key, [None] * self.repeats)[round_] = value

    def fail(self, key: str, why: str) -> None:
        self.missing.setdefault(key, why)

    def stat(self, key: str, scale: float = 1.0) -> Stat:
        return Stat([v * scale for v in self.values.get(key, []) if v is not None])

    def has(self, key: str) -> bool:
        return any(v is not None for v in self.values.get(key, []))

    def ratio(self, num: str, den: str, num_scale: float = 1.0, den_scale: float = 1.0) -> Stat:
        """num / den per round (both measured in the same round), over the rounds that have both."""
        a, b = self.values.get(num, []), self.values.get(den, [])
        out = []
        for x, y in zip(a, b):
            if x is not None and y is not None and y != 0:
                out.append((x * num_scale) / (y * den_scale))
        return Stat(out)


@dataclass
class Row:
    group: str
    what: str
    cores: str
    stat: Stat | None
    unit: str
    per_core: Stat | None = None
    compared: str = ""
    key: str = ""
    status: str = ""  # "not available: ..." / "failed: ..." when there is no figure

    @property
    def ok(self) -> bool:
        return self.stat is not None and bool(self.stat.values) and not self.status


def fmt(v: float, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit.startswith("MB"):
        return f"{v:.2f}"
    if unit.startswith("s/") or unit == "s":
        return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(s: Stat, suffix: str, percent: bool = False) -> str:
    if not s.values:
        return ""
    if percent:
        text = f"{s.median:.0%}"
        if len(s.values) > 1:
            text += f" ({s.min:.0%}-{s.max:.0%})"
        return f"{text} {suffix}".strip()
    text = f"{s.median:.2f}x"
    if len(s.values) > 1:
        text += f" ({s.min:.2f}-{s.max:.2f})"
    return f"{text} {suffix}".strip()


HEADER = ("Group", "Measurement", "Cores", "Median", "Min-max", "Unit", "Per core", "Compared (per round)")


def table(rows: list[Row]) -> str:
    """The markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 2 + ["---"] * 2 + ["---:", "---"]) + "|"]
    last_group = None
    for r in rows:
        group = f"**{r.group}**" if r.group != last_group else ""
        last_group = r.group
        if r.ok:
            s = r.stat
            assert s is not None
            med = fmt(s.median, r.unit)
            rng = f"{fmt(s.min, r.unit)}-{fmt(s.max, r.unit)}" if len(s.values) > 1 else "-"
            pc = fmt(r.per_core.median, r.unit) if r.per_core is not None and r.per_core.values else ""
            cells = [group, r.what, r.cores, med, rng, r.unit, pc, r.compared]
        else:
            cells = [group, r.what, r.cores, r.status or "not measured", "", r.unit, "", ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
