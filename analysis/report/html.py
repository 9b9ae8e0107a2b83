"""The report as one self-contained HTML file: a pure function of a `ReportContent`.

Everything is inside the file: the style sheet is inline, every figure is a PNG embedded as a
`data:` URI, no script is used, and every link is an anchor within the page. The file can be mailed,
opened offline, or put beside a paper draft.

Reading order: the hypothesis-check table (claim, paper, method form, statistic with its bootstrap
interval over seeds, threshold, verdict), a section per paper (what was run, its claims in words,
its figures), the initialization atlas of every placement, and the environment that produced it.
"""

from __future__ import annotations

import base64
import re
from html import escape

import pandas as pd

from analysis.plot.figures import DPI
from analysis.report.content import (
    CONCERN_ORDER,
    RenderedFigure,
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

CSS_PX_PER_INCH = 96  # CSS's fixed ratio: a figure shown at its size in inches keeps its font sizes in points
STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 0 auto; padding: 0 24px 48px; }
h1 { font-size: 1.7em; margin: 28px 0 4px; } h2 { font-size: 1.35em; margin-top: 2.2em;
       border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 1.08em; margin: 1.4em 0 .4em; }
.lede { color: #444; margin: 0 0 10px; } .citation { color: #555; font-style: italic; margin-top: -4px; }
nav { font-size: .93em; margin: 10px 0 0; padding: 8px 12px; background: #f6f6f8; border-radius: 6px;
      display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav a { white-space: nowrap; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
code, pre { font: .88em/1.4 ui-monospace, "DejaVu Sans Mono", monospace; background: #f3f3f5;
       border-radius: 3px; } code { padding: 0 3px; } pre { padding: 8px 10px; overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: .9em; }
th, td { border: 1px solid #d8d8dc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th, td { overflow-wrap: anywhere; } th { overflow-wrap: normal; } .scroll { overflow-x: auto; max-width: 100%; }
table.checks { width: 100%; font-size: .86em; } table.checks td.aside { font-size: .92em; color: #333; }
table.settings { font-size: .86em; } table.settings td { line-height: 1.7; }
details.paper { margin: 6px 0; } details.paper > summary { cursor: pointer; padding: 4px 0; }
ul.concerns { padding-left: 20px; } ul.concerns li { margin-bottom: 4px; }
.verdict { font-weight: 600; padding: 1px 7px; border-radius: 10px; white-space: nowrap; font-size: .92em; }
.v-reproduced { background: #d7f5dd; color: #0f5a22; } .v-not-reproduced { background: #fbdcdc; color: #8a1212; }
.v-inconclusive { background: #fdf0cc; color: #6b4e00; }
.counts .verdict { margin-right: 6px; }
figure { margin: 18px 0 26px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; margin-top: 4px; max-width: 900px; }
ul.claims { padding-left: 20px; } ul.claims li { margin-bottom: 10px; }
.meta { color: #555; font-size: .9em; } .error { background: #fbdcdc; padding: 8px 12px; border-radius: 6px; }
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", lambda m: f"<code>{m.group(1)}</code>", escape(text, quote=False))


def _paragraphs(text: str) -> str:
    html = []
    for kind, items in blocks(text):
        if kind == "ul":
            html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            html.append(f"<p>{_inline(items[0])}</p>")
    return "\n".join(html)


def claim_anchor(claim_id: str) -> str:
    """The id of a claim's entry in its section."""
    return "claim-" + re.sub(r"[^a-z0-9_-]+", "-", claim_id.lower()).strip("-")


def _verdict(verdict: str) -> str:
    css = "v-" + re.sub(r"[^a-z]+", "-", str(verdict).lower())
    return f'<span class="verdict {css}">{escape(str(verdict))}</span>'


def png_width(png: bytes) -> int:
    """Width in pixels, from a PNG's header."""
    return int.from_bytes(png[16:20], "big")


def _figure(fig: RenderedFigure) -> str:
    """The figure at its physical size (a point of text on it is a CSS point; CSS_PX_PER_INCH / DPI),
    shrunk only where the page is narrower than the figure."""
    data = base64.b64encode(fig.png).decode("ascii")
    width = round(png_width(fig.png) * CSS_PX_PER_INCH / DPI)
    return (
        f'<figure id="fig-{escape(fig.name)}"><img src="data:image/png;base64,{data}" width="{width}" '
        f'alt="{escape(fig.caption)}">'
        f"<figcaption>{_inline(fig.caption)}</figcaption></figure>"
    )


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            text = fmt_number(value) if numeric else _inline(str(value))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _check_row(row: pd.Series, extra: list[str]) -> str:
    """One claim: verdict first, then the claim (linked to its entry in its section), its numbers, and
    the optional "paper vs ours" and robustness cells."""
    meta = f"{escape(str(row['id']))} · {_inline(str(row['source']))} · {_inline(str(row['method_form']))}"
    cells = [
        f"<td>{_verdict(row['verdict'])}</td>",
        f'<td class="claim"><a href="#{claim_anchor(row["id"])}">{_inline(str(row["statement"]))}</a>'
        f'<div class="meta">{meta}</div></td>',
        f'<td class="num">{escape(fmt_statistic(row))}</td><td class="num">{escape(fmt_threshold(row))}</td>',
        f'<td class="num">{escape(str(row["n_seeds"]))}</td>',
    ]
    if "setting" in extra:
        cells.append(f'<td class="aside">{_inline(setting_text(row))}</td>')
    if "robustness" in extra:
        cells.append(f'<td class="aside">{_inline(robustness_text(row))}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def check_table(content: ReportContent) -> str:
    """The hypothesis checks, leading with what did not reproduce: a list of those claims, then one
    collapsible table per paper (`<details>`, no script; open where a claim did not reproduce), papers
    and rows ordered by verdict (not reproduced, inconclusive, reproduced). The verdict is the first
    column; the "paper vs ours" setting and the verdict's robustness are columns when the rows carry
    them (`setting_text`, `robustness_text`)."""
    checks = content.checks
    if checks.empty:
        return "<p>No hypothesis checks in this report.</p>"
    extra = [
        name
        for name, text in (("setting", setting_text), ("robustness", robustness_text))
        if any(text(row) for _, row in checks.iterrows())
    ]
    head = (
        "<tr><th>verdict</th><th>claim</th><th>statistic [95% CI]</th><th>threshold</th><th>seeds</th>"
        + ("<th>paper vs ours</th>" if "setting" in extra else "")
        + ("<th>robustness</th>" if "robustness" in extra else "")
        + "</tr>"
    )
    parts = []
    concerns = not_reproduced(checks)
    if len(concerns):
        items = "".join(
            f'<li>{_verdict(row["verdict"])} <a href="#{claim_anchor(row["id"])}">{_inline(str(row["statement"]))}</a>'
            f' <span class="meta">{escape(str(row["id"]))}</span></li>'
            for _, row in concerns.iterrows()
        )
        parts.append(f'<h3>Did not reproduce ({len(concerns)})</h3><ul class="concerns">{items}</ul>')
    parts.append("<h3>Every check, by paper</h3>")
    for paper, rows in checks_by_paper(checks):
        section = content.section_of(paper)
        counts = " ".join(f"{_verdict(v)} {n}" for v, n in verdict_counts(rows).items() if n)
        link = f' <a href="#{section}">section</a>' if section else ""
        opened = " open" if rows["verdict"].isin(CONCERN_ORDER[:2]).any() else ""
        body = "".join(_check_row(row, extra) for _, row in rows.iterrows())
        parts.append(
            f'<details class="paper"{opened}><summary><b>{escape(paper)}</b> · {counts}{link}</summary>'
            f'<table class="checks"><thead>{head}</thead><tbody>{body}</tbody></table></details>'
        )
    return "\n".join(parts)


def _claims(section: Section) -> str:
    if section.claims.empty:
        return ""
    items = []
    for _, row in section.claims.iterrows():
        note = f'<br><span class="meta">{_inline(str(row["note"]))}</span>' if str(row["note"]).strip() else ""
        described = str(row.get("statistic_description") or "").strip()  # what the statistic measures
        note += f'<br><span class="meta">statistic: {_inline(described)}</span>' if described else ""
        items.append(
            f'<li id="{claim_anchor(row["id"])}">{_verdict(row["verdict"])} {_inline(str(row["statement"]))}'
            f'<br><span class="meta">{escape(str(row["id"]))} · source: {_inline(str(row["source"]))} · '
            f"method form: {_inline(str(row['method_form']))} · statistic {escape(fmt_statistic(row))}, "
            f"threshold {escape(fmt_threshold(row))}, {escape(str(row['n_seeds']))} seeds</span>{note}</li>"
        )
    return '<h3>Claims</h3><ul class="claims">' + "".join(items) + "</ul>"


def _section(section: Section) -> str:
    parts = [f'<section id="{section.key}"><h2>{escape(section.title)}</h2>']
    if section.citation:
        parts.append(f'<p class="citation">{_inline(section.citation)}</p>')
    if section.error:
        parts.append(f'<p class="error">This part failed: <code>{escape(section.error)}</code></p>')
    parts.append("<h3>What was run</h3>" + _paragraphs(section.summary))
    if isinstance(section.settings, str) and section.settings:
        parts.append(f"<pre>{escape(section.settings)}</pre>")
    elif section.settings:
        rows = "".join(
            f"<tr><th>{escape(group)}</th><td>"
            + (
                _inline(fields[0][1])
                if group == "command"
                else " · ".join(f"<code>{escape(k)}</code> {_inline(v)}" for k, v in fields)
            )
            + "</td></tr>"
            for group, fields in settings_groups(section.settings)
        )
        parts.append(f'<table class="settings">{rows}</table>')
    parts.append(_claims(section))
    if section.figures:
        parts.append("<h3>Figures</h3>" + "".join(_figure(f) for f in section.figures))
    for caption, table in section.tables:
        parts.append(f"<h3>{escape(caption)}</h3>" + _table(table))
    parts.append("</section>")
    return "\n".join(parts)


def _environment(environment: dict) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th>"
        f"<td>{_inline(', '.join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))}</td></tr>"
        for k, v in environment.items()
    )
    return f'<section id="environment"><h2>Environment</h2><table>{rows}</table></section>'


def render_html(content: ReportContent) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    counts = verdict_counts(content.checks)
    has_checks = not content.checks.empty  # a report without experiments has no check section
    nav = ['<a href="#checks">Hypothesis checks</a>'] if has_checks else []
    nav += [f'<a href="#{s.key}" title="{escape(s.title)}">{escape(s.key)}</a>' for s in content.sections]
    nav += [
        f'<a href="#{content.atlas.key}">{escape(content.atlas.title)}</a>',
        '<a href="#environment">Environment</a>',
    ]
    env = content.environment
    lede = (
        f"Preset <code>{escape(content.preset)}</code> · {len(content.checks)} hypothesis checks · "
        f"git commit <code>{escape(str(env.get('git_commit') or 'unknown'))[:12]}</code> · "
        f"wall time {escape(str(env.get('wall_time_s', '?')))} s"
    )
    badges = " ".join(f"{_verdict(v)} {n}" for v, n in counts.items())
    rule = (
        "Each check computes its statistic from per-seed values of an experiment's tidy table and a 95% "
        "percentile-bootstrap interval over seeds. <b>reproduced</b>: the whole interval lies on the claim's "
        "side of the threshold; <b>not reproduced</b>: the whole interval lies on the other side; "
        "<b>inconclusive</b>: the interval straddles the threshold. A claim that does not reproduce is a "
        "finding, reported as measured."
    )
    body = [
        f'<header><h1>{escape(content.title)}</h1><p class="lede">{lede}</p>',
        f"<nav>{''.join(nav)}</nav></header>",
        (
            f'<section id="checks"><h2>Hypothesis checks</h2><p class="counts">{badges}</p><p class="meta">{rule}</p>'
            + check_table(content)
            + "</section>"
            if has_checks
            else ""
        ),
        *(_section(s) for s in content.sections),
        _section(content.atlas),
        _environment(env),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(content.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
