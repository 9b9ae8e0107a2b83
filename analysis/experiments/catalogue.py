"""The claim catalogue: every claim's source, statement, method form, statistic and threshold.

`catalogue_markdown()` is docs/claims.md (regenerate with `lnscope check --catalogue docs/claims.md`;
a test fails when the committed file is out of date). `catalogue_lines(claims)` is `lnscope check --list`.
"""

from __future__ import annotations

from collections.abc import Iterable

from analysis.experiments import EXPERIMENTS
from analysis.experiments.claims import PAPERS, Claim

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
code ran; "ours" marks a threshold set here, before measuring unless the note says otherwise.
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
    return lines


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
            out.append(f"- **Statistic ({c.statistic.kind}):** {c.statistic.description}")
            reads = "; ".join(f"`{f.describe()}`" for f in c.statistic.features)
            out.append(f"- **Reads (per seed):** {reads}")
            out.append(f"- **Threshold:** {_threshold(c)}. {c.threshold_note[0].upper()}{c.threshold_note[1:]}.")
            parts = ", ".join(c.needs) if c.needs else "all"
            out.append(f"- **Experiment:** `{name}` (parts: {parts}); `lnscope check --claim {c.id}`")
    return "\n".join(out).rstrip("\n") + "\n"
