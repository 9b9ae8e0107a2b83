"""What a report holds, independent of how it is written out (HTML or markdown).

A report is data: a check table (one row per hypothesis check), one section per paper, the
initialization atlas, and the environment that produced it. Figures are rendered once, to PNG and
SVG bytes, so the HTML embeds them and the same bytes are written beside it. `analysis.report.html`
and `analysis.report.markdown` are pure functions of a `ReportContent`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from collections.abc import Mapping
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
# The check table leads with what did not reproduce: rows and papers sort by this order.
CONCERN_ORDER = ("not reproduced", "inconclusive", "reproduced")


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
        settings: the preset's settings: (name, value) pairs shown as a small table (`settings_rows`),
            or free text ("" if none).
        error: the error message if the section's experiment failed to run ("" if it ran).
    """

    key: str
    title: str
    citation: str
    summary: str
    claims: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CHECK_COLUMNS)))
    figures: tuple[RenderedFigure, ...] = ()
    tables: tuple[tuple[str, pd.DataFrame], ...] = ()
    settings: str | tuple[tuple[str, str], ...] = ""
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


def _concern(verdict: Any) -> int:
    return CONCERN_ORDER.index(verdict) if verdict in CONCERN_ORDER else len(CONCERN_ORDER)


def checks_by_paper(checks: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The check rows grouped by paper, what did not reproduce first: papers with more "not
    reproduced" (then more "inconclusive") rows lead, and within a paper the rows sort by verdict
    (not reproduced, inconclusive, reproduced), otherwise in their original order."""
    if checks.empty:
        return []
    ordered = checks.assign(_concern=checks["verdict"].map(_concern), _order=range(len(checks)))
    groups = []
    for paper, rows in ordered.groupby("paper", sort=False):
        counts = tuple(-int((rows["verdict"] == v).sum()) for v in CONCERN_ORDER[:2])
        rows = rows.sort_values(["_concern", "_order"], kind="stable").drop(columns=["_concern", "_order"])
        groups.append((counts, int(rows.index.min()), str(paper), rows))
    groups.sort(key=lambda g: (g[0], g[1]))
    return [(paper, rows) for _, _, paper, rows in groups]


def not_reproduced(checks: pd.DataFrame) -> pd.DataFrame:
    """The rows whose verdict is "not reproduced" or "inconclusive", in that order."""
    if checks.empty:
        return checks
    hit = checks[checks["verdict"].isin(CONCERN_ORDER[:2])]
    return hit.iloc[sorted(range(len(hit)), key=lambda i: _concern(hit["verdict"].iloc[i]))]


def _text(value: Any) -> str:
    """A cell's text; missing (None, NaN, absent) is ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def setting_text(row: Mapping[str, Any]) -> str:
    """ "paper: …; ours: …" from a check row's `paper_setting` / `our_setting` (when the claims carry
    them), else ""."""
    paper, ours = _text(row.get("paper_setting")), _text(row.get("our_setting"))
    parts = [f"paper: {paper}" if paper else "", f"ours: {ours}" if ours else ""]
    return "; ".join(p for p in parts if p)


def robustness_text(row: Mapping[str, Any]) -> str:
    """How robust the verdict is over the harness grid, from a check row's `robustness` (a dict with
    `holds`, `n`, `flipped_by`, or text) or its `holds`/`n`/`flipped_by` columns; "" when absent."""
    summary = row.get("robustness")
    if isinstance(summary, Mapping):
        source = summary
    elif _text(summary):
        return _text(summary)
    else:
        source = row
    holds, n, flipped = source.get("holds"), source.get("n"), _text(source.get("flipped_by"))
    if _text(holds) == "":
        return ""
    text = f"holds {holds}/{n}" if _text(n) else f"holds {holds}"
    return text + (f"; flipped by {flipped}" if flipped else "")


def settings_groups(rows: tuple[tuple[str, str], ...]) -> list[tuple[str, list[tuple[str, str]]]]:
    """`settings_rows` grouped for a compact table: one group per nested part (`harness`, `train`) with
    its fields, the top-level fields together under "settings", and the command on its own."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, value in rows:
        group, dot, field_name = name.partition(".")
        if not dot:
            group, field_name = ("command" if name == "command" else "settings"), name
        groups.setdefault(group, []).append((field_name, value))
    return list(groups.items())


def settings_rows(preset: Any) -> tuple[tuple[str, str], ...]:
    """A preset's settings as (name, value) pairs: a dataclass's fields, nested dataclasses flattened
    to dotted names (`harness.d_model`), sequences joined with commas; a mapping's items; anything
    else as its text under "preset"."""
    if dataclasses.is_dataclass(preset) and not isinstance(preset, type):
        items = [(f.name, getattr(preset, f.name)) for f in dataclasses.fields(preset)]
    elif isinstance(preset, Mapping):
        items = list(preset.items())
    else:
        return (("preset", str(preset)),)
    rows: list[tuple[str, str]] = []
    for name, value in items:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            rows += [(f"{name}.{k}", v) for k, v in settings_rows(value)]
        elif isinstance(value, (tuple, list)):
            rows.append((str(name), ", ".join(str(v) for v in value) or "none"))
        else:
            rows.append((str(name), "none" if value is None else str(value)))
    return tuple(rows)
