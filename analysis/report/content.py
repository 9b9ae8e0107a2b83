"""What a report holds, independent of how it is written out (HTML or markdown).

A report is data: a check table (one row per hypothesis check), one section per paper, the
initialization atlas, and the environment that produced it. Figures are rendered once, to PNG and
SVG bytes, so the HTML embeds them and the same bytes are written beside it. `analysis.report.html`
and `analysis.report.markdown` are pure functions of a `ReportContent`.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from analysis.plot.figures import DPI

# The check table's columns (analysis.experiments' CheckResult fields), in the order they are read.
CHECK_COLUMNS = (
    "id",
    "paper",
    "source",
    "statement",
    "method_form",
    "statistic",
    "ci_low",
    "ci_high",
    "threshold",
    "direction",
    "verdict",
    "n_seeds",
    "note",
)
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class RenderedFigure:
    """One figure as the bytes of its PNG and SVG renderings.

    Attributes:
        name: file stem, unique within its section (`[a-z0-9_-]+`).
        caption: what the figure shows, in words.
        png, svg: the renderings (same figure, same size).
    """

    name: str
    caption: str
    png: bytes
    svg: bytes

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"figure name {self.name!r} must be a plain file stem (letters, digits, _ . -)")


def render_figure(fig: Figure, name: str, caption: str, *, dpi: int = DPI) -> RenderedFigure:
    """Render `fig` to PNG and SVG bytes and close it."""
    try:
        out = {}
        for fmt in ("png", "svg"):
            buffer = io.BytesIO()
            # metadata: no creation date in the SVG, so an unchanged figure renders to the same bytes
            fig.savefig(
                buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None
            )
            out[fmt] = buffer.getvalue()
    finally:
        plt.close(fig)
    return RenderedFigure(name=name, caption=caption, png=out["png"], svg=out["svg"])


@dataclass(frozen=True)
class Section:
    """One part of the report: a paper's experiment, or the initialization atlas.

    Attributes:
        key: anchor id and folder name (`xiong2020`, `init`).
        title: heading.
        citation: the paper(s), or "" for the atlas.
        summary: what was run, in words (paragraphs separated by blank lines; `code` in backticks).
        claims: the check table's rows of this section (CHECK_COLUMNS), possibly empty.
        figures: rendered figures, in reading order.
        tables: (caption, table) pairs shown after the figures.
        settings: the preset's settings, as text ("" if none).
        error: the error message if the section's experiment failed to run ("" if it ran).
    """

    key: str
    title: str
    citation: str
    summary: str
    claims: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CHECK_COLUMNS)))
    figures: tuple[RenderedFigure, ...] = ()
    tables: tuple[tuple[str, pd.DataFrame], ...] = ()
    settings: str = ""
    error: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_-]+", self.key):
            raise ValueError(f"section key {self.key!r} must match [a-z0-9_-]+ (it is an anchor and a folder)")
        names = [f.name for f in self.figures]
        if len(set(names)) != len(names):
            raise ValueError(f"section {self.key!r}: figure names repeat: {names}")


@dataclass(frozen=True)
class ReportContent:
    """Everything a report shows.

    Attributes:
        title: the report's heading.
        preset: the experiments' preset ("quick", "paper").
        checks: one row per hypothesis check (CHECK_COLUMNS), every section's claims together.
        sections: one per paper, in reading order.
        atlas: the initialization atlas.
        environment: analysis.io.environment() plus the run's own facts (wall time, command, ...).
    """

    title: str
    preset: str
    checks: pd.DataFrame
    sections: tuple[Section, ...]
    atlas: Section
    environment: dict[str, Any]

    def __post_init__(self) -> None:
        missing = [c for c in CHECK_COLUMNS if c not in self.checks.columns]
        if missing:
            raise ValueError(f"check table lacks columns {missing}; has {list(self.checks.columns)}")
        keys = [s.key for s in (*self.sections, self.atlas)]
        if len(set(keys)) != len(keys):
            raise ValueError(f"section keys repeat: {keys}")

    def section_of(self, paper: str) -> str | None:
        """Anchor of the section holding `paper`'s experiment (None if there is none)."""
        for section in self.sections:
            if section.key == paper or (len(section.claims) and paper in set(section.claims["paper"])):
                return section.key
        return None


# ---------------------------------------------------------------------------------------------
# Formatting shared by the HTML and markdown writers.
# ---------------------------------------------------------------------------------------------
def fmt_number(x: Any) -> str:
    """Three significant digits; NaN and infinities spelled out."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}"


def fmt_statistic(row: pd.Series) -> str:
    """Point estimate with its interval: `0.98 [0.91, 1.05]`."""
    return f"{fmt_number(row['statistic'])} [{fmt_number(row['ci_low'])}, {fmt_number(row['ci_high'])}]"


def fmt_threshold(row: pd.Series) -> str:
    """`≥ 50`, `≤ 1`, `in [0.7, 1.5]`."""
    threshold, direction = row["threshold"], row["direction"]
    if direction == "in":
        low, high = threshold if isinstance(threshold, (tuple, list)) else _pair(threshold)
        return f"in [{fmt_number(low)}, {fmt_number(high)}]"
    symbol = {">=": "≥", "<=": "≤"}.get(direction, direction)
    return f"{symbol} {fmt_number(threshold)}"


def _pair(value: Any) -> tuple[Any, Any]:
    """A stored interval threshold (a numpy array or list after a parquet round trip) as (low, high)."""
    try:
        low, high = list(value)
        return low, high
    except (TypeError, ValueError):
        return value, value


def verdict_counts(checks: pd.DataFrame) -> dict[str, int]:
    return {v: int((checks["verdict"] == v).sum()) for v in VERDICTS}


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its line breaks joined; a "- " line starts its own
    paragraph (a list item)."""
    text = re.sub(r"\n(?=\s*- )", "\n\n", text.strip())
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """Paragraphs grouped for display: ("p", [text]) or ("ul", [item, ...]) for consecutive "- " items."""
    out: list[tuple[str, list[str]]] = []
    for para in paragraphs(text):
        if para.startswith("- "):
            if out and out[-1][0] == "ul":
                out[-1][1].append(para[2:])
            else:
                out.append(("ul", [para[2:]]))
        else:
            out.append(("p", [para]))
    return out
