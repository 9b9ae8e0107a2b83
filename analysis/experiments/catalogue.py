"""The claim catalogue: every claim's source, statement, method form, settings, statistic and threshold,
and the superseded claims.

`catalogue_markdown()` is docs/claims.md (regenerate with `lnscope check --catalogue docs/claims.md`;
a test fails when the committed file is out of date). `catalogue_lines(claims)` is `lnscope check --list`,
`superseded_lines(papers)` is `lnscope check --superseded`, and `check_footer(rows)` the lines under
`lnscope check`'s table (each check's paper setting next to ours; the superseded claims of its papers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from analysis.experiments import EXPERIMENTS, SUPERSEDED
from analysis.experiments.claims import PAPERS, THRESHOLD_RULES, Claim, Superseded, seed_span

HEADER = """\
# Claim catalogue

Generated from the claims in `analysis/experiments/` by `lnscope check --catalogue docs/claims.md`
(a test fails when this file is out of date); do not edit by hand. How the checks work, and how to
write your own: [experiments.md](experiments.md).

Every claim is checked by a percentile-bootstrap interval over seeds of its statistic (2000
resamples, 95%): **reproduced** when the whole interval lies on the claim's side of the threshold,
**not reproduced** when it lies wholly on the other side, **inconclusive** when it straddles the
threshold. "The calibration's pre-registered threshold" is a threshold set with a 2-3x margin around
a measurement of an earlier calibration run ([calibration.md](calibration.md)), before any of this
code ran; "ours" marks a threshold set here, before measuring unless the note says otherwise. A claim
with a **Calibration** record had its threshold computed by the stated rule from its statistic on
calibration seeds disjoint from the held-out seeds its check reads (`analysis.experiments.calibration`
reruns it); the record gives both runs' numbers. Each claim gives the paper's setting next to ours
where they differ. Claims replaced by a restatement are listed at the end, with why and their last
verdict (`lnscope check --superseded`).
"""


def _threshold(c: Claim) -> str:
    return c.threshold_text()


def catalogue_lines(claims: Iterable[Claim]) -> list[str]:
    """One compact entry per claim (for the terminal)."""
    lines = []
    for c in claims:
        lines.append(f"{c.id}  [{c.when}]  {c.statistic.kind} {_threshold(c)}")
        lines.append(f"    {c.statement}")
        lines.append(f"    form: {c.method_form}")
        if c.paper_setting or c.our_setting:
            lines.append(f"    paper: {c.paper_setting or '-'} | ours: {c.our_setting or '-'}")
        if c.calibration is not None:
            lines.append(f"    {c.calibration.describe()}")
    return lines


def superseded_lines(papers: Iterable[str] | None = None) -> list[str]:
    """One line per superseded claim (of `papers`, default all): by which, why, its last verdict."""
    chosen = None if papers is None else set(papers)
    unknown = sorted((chosen or set()) - set(PAPERS))
    if unknown:
        raise ValueError(f"unknown paper(s) {unknown}; valid choices: {', '.join(PAPERS)}")
    return [s.line() for s in SUPERSEDED.values() if chosen is None or s.paper in chosen]


def check_footer(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Lines under `lnscope check`'s table: each checked claim's paper setting next to ours, and the
    superseded claims of the papers checked."""
    rows = list(rows)
    groups: dict[tuple[str, str], list[str]] = {}  # claims sharing a setting pair are named together
    for r in rows:
        pair = (r.get("paper_setting") or "", r.get("our_setting") or "")
        if any(pair):
            groups.setdefault(pair, []).append(r["id"])
    lines = [
        f"  {', '.join(ids)}\n      paper: {paper or '-'}\n      ours:  {ours or '-'}"
        for (paper, ours), ids in groups.items()
    ]
    if lines:
        lines.insert(0, "\nsettings (the paper's, ours):")
    papers = {r["paper"] for r in rows}
    old = [s.id for s in SUPERSEDED.values() if s.paper in papers]
    if old:
        lines.append(f"\nsuperseded, not checked ({len(old)}; `lnscope check --superseded`): {', '.join(old)}")
    return lines


def _superseded_markdown(items: Iterable[Superseded]) -> list[str]:
    out = [
        "\n## Superseded claims\n",
        "Claims replaced by a restatement closer to what their papers state. They are no longer checked;",
        "`lnscope check --claim <old id>` names the replacement.\n",
        "| old claim | replaced by | last verdict (quick preset) | why |",
        "|---|---|---|---|",
    ]
    for s in items:
        new = ", ".join(f"[`{r}`](#{r.replace('.', '')})" for r in s.replaced_by)
        out.append(f"| `{s.id}` | {new} | {s.old_verdict}: {s.old_statistic} | {s.why} |")
    for s in items:
        out.append(f"\n### `{s.id}` (superseded)\n")
        out.append(f"- **Statement:** {s.statement}")
        out.append(f"- **Last verdict:** {s.old_verdict}, {s.old_statistic}")
        out.append(f"- **Why replaced:** {s.why}")
        out.append(f"- **Replaced by:** {', '.join(f'`{r}`' for r in s.replaced_by)}")
    return out


def catalogue_markdown() -> str:
    """docs/claims.md: the claims of every experiment, grouped by paper."""
    out = [HEADER]
    by_paper: dict[str, list[tuple[str, Claim]]] = {p: [] for p in PAPERS}
    for exp in EXPERIMENTS.values():
        for c in exp.claims:
            by_paper[c.paper].append((exp.name, c))
    for paper, items in by_paper.items():
        if not items:
            continue
        out.append(f"\n## {paper}: {PAPERS[paper]}\n")
        out.append("| claim | when | statement | threshold |")
        out.append("|---|---|---|---|")
        for _, c in items:
            out.append(f"| `{c.id}` | {c.when} | {c.statement} | {c.statistic.kind} {_threshold(c)} |")
        for name, c in items:
            out.append(f"\n### `{c.id}`\n")
            out.append(f"- **Source:** {c.source}")
            out.append(f"- **Statement:** {c.statement}")
            out.append(f"- **Method form tested:** {c.method_form}")
            if c.paper_setting or c.our_setting:
                out.append(f"- **Paper's setting:** {c.paper_setting or 'not stated'}")
                out.append(f"- **Our setting:** {c.our_setting or 'not stated'}")
            out.append(f"- **Statistic ({c.statistic.kind}):** {c.statistic.description}")
            reads = "; ".join(f"`{f.describe()}`" for f in c.statistic.features)
            out.append(f"- **Reads (per seed):** {reads}")
            out.append(f"- **Threshold:** {_threshold(c)}. {c.threshold_note[0].upper()}{c.threshold_note[1:]}.")
            cal = c.calibration
            if cal is not None:
                low, high = cal.interval
                out.append(
                    f"- **Calibration:** seeds {cal.seeds_text()} ({cal.preset} preset): {cal.value:.3g} "
                    f"[{low:.3g}, {high:.3g}]; rule: threshold = {THRESHOLD_RULES[cal.rule].description}, "
                    f"m = {cal.margin:g}, to 2 significant digits"
                )
                result = cal.held_out_result or "not yet run"
                out.append(f"- **Held-out check:** seeds {seed_span(cal.held_out_seeds)}: {result}")
            parts = ", ".join(c.needs) if c.needs else "all"
            out.append(f"- **Experiment:** `{name}` (parts: {parts}); `lnscope check --claim {c.id}`")
    if SUPERSEDED:
        out += _superseded_markdown(list(SUPERSEDED.values()))
    return "\n".join(out).rstrip("\n") + "\n"
