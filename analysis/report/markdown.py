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
    checks_by_paper,
    fmt_number,
    fmt_statistic,
    fmt_threshold,
    not_reproduced,
    robustness_text,
    setting_text,
    settings_groups,
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
    """What did not reproduce, then one table per paper; verdict first (the HTML's order)."""
    if content.checks.empty:
        return "No hypothesis checks in this report."
    out = []
    concerns = not_reproduced(content.checks)
    if len(concerns):
        out += [f"### Did not reproduce ({len(concerns)})", ""]
        out += [f"- **{r['verdict']}**: {r['statement']} (`{r['id']}`)" for _, r in concerns.iterrows()]
        out.append("")
    extra = {
        name: text
        for name, text in (("paper vs ours", setting_text), ("robustness", robustness_text))
        if any(text(row) for _, row in content.checks.iterrows())
    }
    for paper, rows in checks_by_paper(content.checks):
        section = content.section_of(paper)
        out += [f"### [{paper}](#{section})" if section else f"### {paper}", ""]
        table = [
            {
                "verdict": f"**{row['verdict']}**",
                "claim": f"{row['statement']} (`{row['id']}`; {row['method_form']})",
                "statistic [95% CI]": fmt_statistic(row),
                "threshold": fmt_threshold(row),
                "seeds": str(row["n_seeds"]),
                **{name: text(row) for name, text in extra.items()},
            }
            for _, row in rows.iterrows()
        ]
        out += [markdown_table(pd.DataFrame(table)), ""]
    return "\n".join(out)


def _section(section: Section) -> str:
    out = [f'<a id="{section.key}"></a>', f"## {section.title}", ""]
    if section.citation:
        out += [f"*{section.citation}*", ""]
    if section.error:
        out += [f"**This part failed:** `{section.error}`", ""]
    out += ["### What was run", ""]
    for kind, items in blocks(section.summary):
        out += ([f"- {i}" for i in items] if kind == "ul" else items) + [""]
    if isinstance(section.settings, str) and section.settings:
        out += ["```", section.settings, "```", ""]
    elif section.settings:
        table = [
            (group, " · ".join(v if group == "command" else f"`{k}` {v}" for k, v in fields))
            for group, fields in settings_groups(section.settings)
        ]
        out += [markdown_table(pd.DataFrame(table, columns=["settings", "values"])), ""]
    if not section.claims.empty:
        out += ["### Claims", ""]
        for _, row in section.claims.iterrows():
            note = f" {row['note']}" if str(row["note"]).strip() else ""
            described = str(row.get("statistic_description") or "").strip()
            note += f" Statistic: {described}." if described else ""
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
    has_checks = not content.checks.empty
    toc = [
        *(["- [Hypothesis checks](#checks)"] if has_checks else []),
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
        *(
            [
                '<a id="checks"></a>',
                "## Hypothesis checks",
                "",
                "Verdicts from a 95% percentile-bootstrap interval over seeds: **reproduced** when the whole "
                "interval lies on the claim's side of the threshold, **not reproduced** when it lies on the other "
                "side, **inconclusive** when it straddles the threshold.",
                "",
                _check_table(content),
                "",
            ]
            if has_checks
            else []
        ),
        *(_section(s) for s in content.sections),
        _section(content.atlas),
        '<a id="environment"></a>',
        "## Environment",
        "",
        markdown_table(env_rows),
        "",
    ]
    return "\n".join(parts)
