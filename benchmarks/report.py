"""One row of the table: a figure, the floor it is judged against, the target, the verdict."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    name: str
    unit: str                  # of figure, p50, p99, rate and floor
    figure: float              # the value judged (a p50, a p99, a rate, a size)
    floor: float               # the physical floor measured in this run, same unit
    target: float | None       # ratio figure/floor must be <= target (>= if at_least); None:
                               # the ratio is shown, only ``absolute_max`` is judged
    at_least: bool = False
    p50: float | None = None
    p99: float | None = None
    rate: float | None = None
    absolute_max: float | None = None  # a second, absolute target on the figure (same unit)
    floor_name: str = ""
    note: str = ""
    ratio: float = field(init=False, default=math.nan)
    status: str = field(init=False, default="MISS")

    def __post_init__(self) -> None:
        self.ratio = self.figure / self.floor if self.floor else math.nan
        if self.target is None and self.absolute_max is None:
            self.status = "INFO"  # printed beside its floor, judged by no target
            return
        if self.target is None:
            ok = True
        else:
            ok = self.ratio >= self.target if self.at_least else self.ratio <= self.target
        if self.absolute_max is not None:
            ok = ok and self.figure <= self.absolute_max
        self.status = "PASS" if ok else "MISS"

    @property
    def target_text(self) -> str:
        parts = [] if self.target is None else [f"{'>=' if self.at_least else '<='} {self.target:g}x"]
        if self.absolute_max is not None:
            parts.append(f"<= {self.absolute_max:g} {self.unit}")
        return ", ".join(parts)

    def as_json(self) -> dict:
        data = asdict(self)
        data["target_text"] = self.target_text
        if self.target is None:
            data["target"] = self.absolute_max
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


HEADER = ("figure", "ratio", "target", "status", "p50", "p99 / rate", "floor", "floor is")


def table(rows: list[Row], markdown: bool = False) -> str:
    cells = [HEADER]
    for r in rows:
        second = fmt(r.rate, r.unit) if r.rate is not None else fmt(r.p99, r.unit)
        cells.append((r.name, f"{r.ratio:.2f}x" if math.isfinite(r.ratio) else "-", r.target_text,
                      r.status, fmt(r.p50, r.unit) if r.p50 is not None else fmt(r.figure, r.unit),
                      second, fmt(r.floor, r.unit), r.floor_name))
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "---|" * len(HEADER))
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(HEADER))).rstrip()
                     for c in cells)


def write_json(rows: list[Row], path: str) -> None:
    with open(path, "w") as f:
        json.dump([r.as_json() for r in rows], f, indent=1, allow_nan=False)
