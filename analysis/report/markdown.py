"""The report as markdown (`report.md`), for reading in a repository browser: the HTML's twin.

The same content as `analysis.report.html`, with figures linked to the PNG files written beside it
(`figures/<section>/<name>.png`, each with its SVG twin) instead of embedded.
"""

from __future__ import annotations

import pandas as pd

from analysis.report.content import (
    ReportContent,
    Section,
    blocks,
    fmt_number,
    fmt_statistic,
    fmt_threshold,
    verdict_counts,
)


def figure_path(section: Section, name: str, suffix: str = "png") -> str:
    """Where a section's figure is written, relative to the report folder."""
    return f"figures/{section.key}/{name}.{suffix}"


def _cell(value: object) -> str:
    text = fmt_number(value) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _check_table(content: ReportContent) -> str:
    if content.checks.empty:
        return "No hypothesis checks in this report."
    rows = []
    for _, row in content.checks.iterrows():
        section = content.section_of(row["paper"])
        paper = f"[{row['paper']}](#{section})" if section else str(row["paper"])
        rows.append(
            {
                "claim": f"{row['statement']} (`{row['id']}`)",
                "paper": paper,
                "method form": row["method_form"],
                "statistic [95% CI]": fmt_statistic(row),
                "threshold": fmt_threshold(row),
                "verdict": f"**{row['verdict']}**",
                "seeds": str(row["n_seeds"]),
            }
        )
    return markdown_table(pd.DataFrame(rows))


def _section(section: Section) -> str:
    out = [f'<a id="{section.key}"></a>', f"## {section.title}", ""]
    if section.citation:
        out += [f"*{section.citation}*", ""]
    if section.error:
        out += [f"**This part failed:** `{section.error}`", ""]
    out += ["### What was run", ""]
    for kind, items in blocks(section.summary):
        out += ([f"- {i}" for i in items] if kind == "ul" else items) + [""]
    if section.settings:
        out += ["```", section.settings, "```", ""]
    if not section.claims.empty:
        out += ["### Claims", ""]
        for _, row in section.claims.iterrows():
            note = f" {row['note']}" if str(row["note"]).strip() else ""
            out.append(
                f"- **{row['verdict']}**: {row['statement']} (`{row['id']}`; source: {row['source']}; "
                f"method form: {row['method_form']}; statistic {fmt_statistic(row)}, threshold "
                f"{fmt_threshold(row)}, {row['n_seeds']} seeds).{note}"
            )
        out.append("")
    if section.figures:
        out += ["### Figures", ""]
        for fig in section.figures:
            out += [
                f"![{fig.name}]({figure_path(section, fig.name)})",
                "",
                f"*{fig.caption}* ([SVG]({figure_path(section, fig.name, 'svg')}))",
                "",
            ]
    for caption, table in section.tables:
        out += [f"### {caption}", "", markdown_table(table), ""]
    return "\n".join(out)


def render_markdown(content: ReportContent) -> str:
    """The whole report as one markdown document, figures linked relative to the report folder."""
    counts = ", ".join(f"{n} {v}" for v, n in verdict_counts(content.checks).items())
    env = content.environment
    toc = [
        "- [Hypothesis checks](#checks)",
        *(f"- [{s.title}](#{s.key})" for s in content.sections),
        f"- [{content.atlas.title}](#{content.atlas.key})",
        "- [Environment](#environment)",
    ]
    env_rows = pd.DataFrame(
        [(k, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)) for k, v in env.items()],
        columns=["", "value"],
    )
    parts = [
        f"# {content.title}",
        "",
        f"Preset `{content.preset}`, {len(content.checks)} hypothesis checks ({counts}); git commit "
        f"`{str(env.get('git_commit') or 'unknown')[:12]}`; wall time {env.get('wall_time_s', '?')} s. The same report "
        "as one self-contained file: `index.html`. Data: `data/*.parquet` (tidy tables, with their settings in "
        "`data/*.json`).",
        "",
        *toc,
        "",
        '<a id="checks"></a>',
        "## Hypothesis checks",
        "",
        "Verdicts from a 95% percentile-bootstrap interval over seeds: **reproduced** when the whole interval "
        "lies on the claim's side of the threshold, **not reproduced** when it lies on the other side, "
        "**inconclusive** when it straddles the threshold.",
        "",
        _check_table(content),
        "",
        *(_section(s) for s in content.sections),
        _section(content.atlas),
        '<a id="environment"></a>',
        "## Environment",
        "",
        markdown_table(env_rows),
        "",
    ]
    return "\n".join(parts)
