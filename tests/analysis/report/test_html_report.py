"""The HTML report built from a tiny fake experiment and a synthetic atlas study: every figure is
embedded, nothing is referenced outside the file, the check table has a row per claim, every link
resolves (HTML anchors, and report.md's files), the data sits beside it, and --redraw, reuse and a
failing experiment behave."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.text
import pandas as pd
import pytest

from analysis import cli
from analysis.experiments import atlas
from analysis.experiments.runs import InitJob
from analysis.options import STORE_VAR
from analysis.plot.figures import DPI, FONT_MIN_PT, PAGE_WIDTH_IN
from analysis.report import build
from analysis.report import cli as report_cli
from analysis.report.content import CHECK_COLUMNS, ReportContent, Section, settings_rows
from analysis.report.html import CSS_PX_PER_INCH, png_width, render_html
from tests.analysis.report.fakes import ATLAS, FakeExperiment, atlas_frame, store_atlas

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_ATLAS_FIGURES = len(atlas.PROFILE_PANELS) + len(atlas.ARCH_PANELS)


class Page(HTMLParser):
    """Every tag with its attributes, the ids, and the rows of the check table."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.ids: set[str] = set()
        self.id_list: list[str] = []
        self.check_rows = 0
        self._in_checks = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
            self.id_list.append(attrs["id"])
        if tag == "table" and "checks" in attrs.get("class", ""):
            self._in_checks = True
        if tag == "tr" and self._in_checks:
            self.check_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_checks = False


def _build(out: Path, **kwargs) -> build.BuiltReport:
    kwargs.setdefault("experiments", {"fake2024": FakeExperiment()})
    return build.build_report(out, atlas=ATLAS, progress=False, **kwargs)  # the real checks of real claims


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, build.BuiltReport, FakeExperiment]:
    """One report (rendering figures is what costs): a stored atlas study that must be reused,
    the fake experiment, one that raises, and one whose figures raise; no `store` given, so the
    experiments read the store every lnscope command shares ($LNSCOPE_STORE)."""
    out = tmp_path_factory.mktemp("report")
    store_atlas(out)
    experiment = FakeExperiment()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STORE_VAR, str(out / "shared-store"))
        refuse = lambda *a, **k: pytest.fail("the atlas was recomputed although a stored study matched")
        patch.setattr(atlas, "collect", refuse)
        patch.setattr(InitJob, "compute", refuse)  # nor probed ahead of the parts (build._compute_ahead)
        built = _build(
            out,
            experiments={
                "fake2024": experiment,
                "broken2024": FakeExperiment(name="broken2024", fail=True),
                "drawless2024": FakeExperiment(name="drawless2024", figures_fail=True),
            },
        )
    return out, built, experiment


def test_every_figure_is_embedded_and_nothing_is_referenced_outside(report) -> None:
    out, built, _ = report
    page = Page(built.index.read_text())
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == N_ATLAS_FIGURES + 2  # the atlas and the fake experiment's two (the broken one: none)
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    references = [(tag, k, v) for tag, attrs in page.tags for k, v in attrs.items() if k in ("src", "href", "srcset")]
    outside = [r for r in references if not (r[2].startswith("data:") or r[2].startswith("#"))]
    assert not outside, f"references outside the file: {outside}"
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]


def test_every_link_resolves_and_the_check_table_has_a_row_per_claim(report) -> None:
    out, built, experiment = report
    page = Page(built.index.read_text())
    anchors = [attrs["href"][1:] for tag, attrs in page.tags if tag == "a" and "href" in attrs]
    assert anchors and not [a for a in anchors if a not in page.ids]
    assert len(page.id_list) == len(page.ids), "an id is used twice"
    assert page.check_rows == 1 + 2 * len(experiment.claims)  # header + one per claim (fake, drawless)
    text = built.index.read_text()
    assert all(f'id="claim-{c.id.replace(".", "-")}"' in text for c in experiment.claims)
    for verdict in ("reproduced", "not reproduced", "inconclusive"):
        assert f'class="verdict v-{verdict.replace(" ", "-")}"' in text
    # the order of the page: checks, then the paper's section, then the atlas, then the environment
    positions = [
        text.index(f'id="{i}"') for i in ("checks", "fake2024", "broken2024", "drawless2024", "init", "environment")
    ]
    assert positions == sorted(positions)
    assert "in [7.3, 9]" in text and "≥ 5" in text and "≤ 2" in text


def test_data_figures_and_markdown_twin_beside_the_html(report) -> None:
    out, built, experiment = report
    assert {p.name for p in (out / "data").iterdir()} >= {
        "init.parquet",
        "init.json",
        "fake2024.parquet",
        "fake2024.json",
        "checks.parquet",
        "checks.json",
    }
    checks = pd.read_parquet(out / "data" / "checks.parquet")
    assert list(checks["id"]) == [
        f"xiong2020.{e}_{c}" for e in ("fake2024", "drawless2024") for c in ("big", "small", "noisy")
    ]
    assert list(checks["verdict"]) == ["reproduced", "not reproduced", "inconclusive"] * 2
    assert (
        checks.loc[checks["direction"] == "in", ["threshold_low", "threshold_high"]].values.tolist() == [[7.3, 9.0]] * 2
    )
    records = json.loads((out / "data" / "checks.json").read_text())
    assert [r["threshold"] for r in records] == [5.0, 2.0, [7.3, 9.0]] * 2
    pngs = sorted((out / "figures").rglob("*.png"))
    assert len(pngs) == N_ATLAS_FIGURES + 2 and all(p.with_suffix(".svg").exists() for p in pngs)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    md = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    files = [link for link in links if not link.startswith("#")]
    assert len(files) == 2 * len(pngs) and all((out / f).exists() for f in files)
    md_anchors = set(re.findall(r'<a id="([^"]+)"></a>', md))
    assert {link[1:] for link in links if link.startswith("#")} <= md_anchors
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and "(`xiong2020." in line]
    assert len(table_rows) == 2 * len(experiment.claims)


def test_environment_is_recorded(report) -> None:
    _, built, _ = report
    text = built.index.read_text()
    environment = text[text.index('id="environment"') :]
    for key in ("jax", "flax", "devices", "git_commit", "wall_time_s", "preset"):
        assert f"<th>{key}</th>" in environment


def test_a_failing_experiment_is_reported_and_the_rest_still_written(report) -> None:
    out, built, experiment = report
    assert built.failed == ("broken2024", "drawless2024") and experiment.runs == [("quick", out / "shared-store")]
    text = built.index.read_text()
    broken = text[text.index('id="broken2024"') : text.index('id="drawless2024"')]
    assert "fake experiment blew up" in broken and "<img" not in broken
    assert not (out / "data" / "broken2024.parquet").exists()
    drawless = text[text.index('id="drawless2024"') : text.index('id="init"')]
    assert "drawing its figures failed: ValueError" in drawless and "<img" not in drawless
    assert 'id="claim-xiong2020-drawless2024_big"' in drawless  # its claims are still checked and listed
    assert (out / "data" / "drawless2024.parquet").exists()  # its data and checks are kept


@pytest.mark.slow
def test_redraw_needs_no_computation(report, tmp_path) -> None:
    out, _, _ = report
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "data").mkdir()
    for p in (out / "data").iterdir():
        (copy / "data" / p.name).write_bytes(p.read_bytes())
    untouched = FakeExperiment(fail=True)  # redraw must not run it
    built = _build(copy, experiments={"fake2024": untouched}, redraw=True)
    assert untouched.runs == [] and built.failed == ()
    assert Page(built.index.read_text()).check_rows == 4
    assert len(list((copy / "figures").rglob("*.png"))) == N_ATLAS_FIGURES + 2
    assert not plt.get_fignums()  # every figure was closed


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(preset="fast"), "unknown preset 'fast'"),
        (dict(experiments={"fake2024": FakeExperiment(presets={"quick": {}})}, preset="paper"), "no 'paper' preset"),
        (dict(redraw=True), "--redraw needs an existing"),
    ],
)
def test_bad_arguments_fail_before_any_computation(tmp_path, kwargs, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        _build(tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "var, value", [("LNSCOPE_PIN_WORKERS", "yes"), ("LNSCOPE_WORKERS", "two"), ("LNSCOPE_STREAMS", "0")]
)
def test_a_bad_environment_setting_fails_before_any_computation(tmp_path, monkeypatch, var, value) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"{var}={value!r}"):
        _build(tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_experiment_selection() -> None:
    available = {"a": 1, "b": 2}
    assert build.select_experiments("all", available) == available
    assert build.select_experiments("none", available) == {}
    assert build.select_experiments("b, a", available) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match=r"unknown \['c'\]"):
        build.select_experiments("a,c", available)


def test_check_columns_match_the_report_table() -> None:
    experiment = FakeExperiment()
    assert set(CHECK_COLUMNS) <= set(build.check_claims(experiment, experiment.run("quick")).columns)


# ------------------------------------------------------------------------------------------------
# A real browser: Debian's chromium, headless (CI installs it: .ci/run; `make browser` here).
# ------------------------------------------------------------------------------------------------
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
BROWSER_TIMEOUT_S = 120  # a cold start of chromium takes seconds; the limit only stops a hung browser
# Appended to a copy of the report (the report itself has no script): after the load event, record
# for every image whether it loaded and decoded, where --dump-dom can read it.
PROBE_SCRIPT = """<script>window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({loaded: i.complete && i.naturalWidth > 0, w: i.naturalWidth}));
  const out = document.createElement("pre"); out.id = "image-check"; out.textContent = JSON.stringify(images);
  document.body.appendChild(out); });</script>"""


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root, where chromium refuses its sandbox
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={cwd / 'profile'}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; CI's .ci/run installs it)")
def test_report_opens_in_a_browser_with_every_image_loaded(report, tmp_path) -> None:
    out, built, _ = report
    page = tmp_path / "probe.html"
    page.write_text(built.index.read_text().replace("</body>", PROBE_SCRIPT + "</body>"))
    done = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    match = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no image report in the dumped DOM; chromium said: {done.stderr[-2000:]}"
    images = json.loads(match.group(1).replace("&quot;", '"'))
    assert len(images) == N_ATLAS_FIGURES + 2
    assert all(i["loaded"] and i["w"] > 100 for i in images), images
    # The top of the unmodified report, as a person sees it (kept in the test's folder for a look).
    shot = tmp_path / "top.png"
    _chromium("--window-size=1280,1600", f"--screenshot={shot}", built.index.as_uri(), cwd=tmp_path)
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20_000


@pytest.mark.parametrize(
    "argv, preset, layers, out",
    [
        ([], "quick", 18, "reports/quick"),
        (["--quick"], "tiny", 6, "reports/tiny"),
        (["--quick", "--preset", "quick", "--out", "elsewhere"], "quick", 6, "elsewhere"),
        (["--preset", "paper", "--layers", "4", "--placements", "pre, post"], "paper", 4, "reports/paper"),
        # an explicit depth wins over --quick's 6 layers (issue 25: --quick silently overrode --layers)
        (["--quick", "--layers", "4"], "tiny", 4, "reports/tiny"),
    ],
)
def test_cli_options_reach_the_build(monkeypatch, argv, preset, layers, out) -> None:
    seen = {}
    monkeypatch.setattr(
        build,
        "build_report",
        lambda path, **kw: seen.update(out=str(path), **kw) or build.BuiltReport(Path(path) / "index.html", (), 0.0),
    )
    assert cli.main(["report", "--experiments", "none", *argv]) == 0
    assert (seen["preset"], seen["atlas"].layers, seen["out"]) == (preset, layers, out)
    assert seen["experiments"] == {} and seen["redraw"] is False
    if "--placements" in argv:
        assert seen["atlas"].placements == ("post", "pre")


def test_python_m_analysis_report_is_lnscope_report(monkeypatch, capsys) -> None:
    """`python -m analysis.report` runs the report room's own command (analysis.report.cli.main), not
    the whole `lnscope` command: the same options, the same bad-input status."""
    seen = {}
    monkeypatch.setattr(
        build,
        "build_report",
        lambda path, **kw: seen.update(out=str(path), **kw) or build.BuiltReport(Path(path) / "index.html", (), 0.0),
    )
    assert report_cli.main(["--quick", "--experiments", "none"]) == 0
    assert (seen["preset"], seen["atlas"].layers, seen["out"]) == ("tiny", 6, "reports/tiny")
    with pytest.raises(SystemExit) as exit_:
        report_cli.main(["--seeds", "0", "--experiments", "none"])
    assert exit_.value.code == 2 and "lnscope: error: seeds must be an integer >= 1, got 0" in capsys.readouterr().err


def test_figures_are_redrawn_only_when_their_data_or_the_code_changed(report, tmp_path, monkeypatch) -> None:
    out, _, _ = report
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    drawn = []
    real_render = build.render_figure
    monkeypatch.setattr(
        build, "render_figure", lambda fig, name, caption: drawn.append(name) or real_render(fig, name, caption)
    )
    _build(copy, experiments={"fake2024": FakeExperiment()})
    assert drawn == []  # same data, same code: every figure from the previous report
    changed = FakeExperiment()
    changed.run = lambda preset, store=None: FakeExperiment.run(changed, preset, store).assign(
        value=lambda d: d["value"] * 2
    )
    built = _build(copy, experiments={"fake2024": changed})
    assert drawn == ["profile", "profile_log"]  # only the section whose data changed
    assert Page(built.index.read_text()).check_rows == 4
    # the code is part of the key: an edit to lnscope's source invalidates every cached figure
    stored = json.loads((copy / "figures" / "init" / "figures.json").read_text())["key"]
    assert stored == build.figure_key(copy / "data" / "init.parquet", build.source_digest())
    assert stored != build.figure_key(copy / "data" / "init.parquet", "edited code")


# ------------------------------------------------------------------------------------------------
# The claims table and the report's layout (issue 25, defects 8, 12, 13, 14).
# ------------------------------------------------------------------------------------------------
def _checks_rows(text: str) -> list[list[str]]:
    """The check tables' body rows, each as its cells' text (tags stripped)."""
    rows = re.findall(r"<tr>(.*?)</tr>", "".join(re.findall(r'<table class="checks">(.*?)</table>', text, re.S)))
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r)] for r in rows]


def test_the_check_table_leads_with_what_did_not_reproduce(report) -> None:
    _, built, _ = report
    text = built.index.read_text()
    checks = text[text.index('id="checks"') : text.index('id="fake2024"')]
    lead = checks.index("Did not reproduce (4)")
    assert lead < checks.index('<details class="paper" open>') < checks.index('<table class="checks">')
    rows = _checks_rows(checks)
    assert rows[0][:2] == ["verdict", "claim"] and "paper" not in rows[0]  # the details' summary names it
    verdicts = [r[0] for r in rows[1:]]
    assert verdicts == ["not reproduced"] * 2 + ["inconclusive"] * 2 + ["reproduced"] * 2
    assert "<script" not in text


def test_setting_and_robustness_columns_appear_when_the_rows_carry_them(report) -> None:
    _, built, experiment = report
    frame = build.check_claims(experiment, experiment.run("quick"))
    plain = _content(frame)
    assert "paper vs ours" not in render_html(plain) and "robustness" not in render_html(plain)
    frame = frame.assign(paper_setting="6-6 enc-dec, WMT", our_setting="d=64, random tokens", robustness=None)
    frame.at[0, "robustness"] = {"holds": 5, "n": 8, "flipped_by": "pos=sinusoidal"}
    rows = _checks_rows(render_html(_content(frame)))
    assert rows[0][-2:] == ["paper vs ours", "robustness"]
    assert ["paper: 6-6 enc-dec, WMT; ours: d=64, random tokens"] == list({r[-2] for r in rows[1:]})
    assert "holds 5/8; flipped by pos=sinusoidal" in [r[-1] for r in rows[1:]]


def _content(checks: pd.DataFrame, settings=()) -> ReportContent:
    atlas_section = Section(key="init", title="Initialization atlas", citation="", summary="s", settings=settings)
    return ReportContent(
        title="t", preset="quick", checks=checks, sections=(), atlas=atlas_section, environment={"git_commit": "x"}
    )


def test_a_report_without_experiments_has_no_check_section() -> None:
    text = render_html(_content(pd.DataFrame(columns=list(CHECK_COLUMNS))))
    assert 'id="checks"' not in text and "Hypothesis checks" not in text


def test_preset_settings_are_a_key_value_table() -> None:
    @dataclasses.dataclass(frozen=True)
    class Inner:
        d_model: int = 64
        depths: tuple = (3, 6)

    @dataclasses.dataclass(frozen=True)
    class Preset:
        harness: Inner = Inner()
        deep: int = 18

    rows = settings_rows(Preset())
    assert rows == (("harness.d_model", "64"), ("harness.depths", "3, 6"), ("deep", "18"))
    text = render_html(_content(pd.DataFrame(columns=list(CHECK_COLUMNS)), settings=rows))
    row = "<tr><th>harness</th><td><code>d_model</code> 64 · <code>depths</code> 3, 6</td></tr>"
    assert row in text and "<tr><th>settings</th><td><code>deep</code> 18</td></tr>" in text and "Preset(" not in text


def test_a_caption_comes_from_the_titles_not_the_file_name() -> None:
    fig, (a, b) = plt.subplots(1, 2)
    a.set_title("Takase et al.: a six-layer model")
    b.set_title("Takase et al.: a six-layer model")
    assert build.figure_caption(fig, "takase2022_six_layer") == "Takase et al.: a six-layer model"
    fig.suptitle("the whole figure")
    assert build.figure_caption(fig, "takase2022_six_layer") == "the whole figure"
    plt.close(fig)


def test_atlas_figures_keep_only_the_requested_placements() -> None:
    """`--placements post,pre`: two families, so 2 x 2 profile panels, none empty; one colorbar per CKA grid."""
    frame = atlas_frame(ATLAS)
    for name, caption, fig in atlas.atlas_figures(frame, ATLAS.layers, ATLAS.seeds):
        if name.startswith("cka_"):
            assert len(fig.axes) == len(ATLAS.placements) + 1, name  # the panels and one colorbar
        else:
            assert len(fig.axes) == 2 * 2 and all(ax.has_data() for ax in fig.axes), name
            assert not any("no norm" in ax.get_title() for ax in fig.axes)
            assert f"`{name}`" in caption  # the code name is in the caption, the y label is words
            assert all(name not in ax.get_ylabel() for ax in fig.axes)
        assert fig.get_size_inches()[0] <= PAGE_WIDTH_IN
        if name in ("act_grad_norm", "cka_decoder"):  # text at page width: nothing below FONT_MIN_PT
            fig.canvas.draw()
            texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
            assert min(t.get_fontsize() for t in texts) >= FONT_MIN_PT, name
        plt.close(fig)


def test_figures_are_shown_at_their_physical_size(report) -> None:
    """A point of text on a figure is a CSS point on the page (so FONT_MIN_PT holds as read): each
    image's width is its PNG's at DPI, and no atlas figure is wider than the page's column."""
    _, built, _ = report
    page = Page(built.index.read_text())
    for tag, attrs in page.tags:
        if tag == "img":
            png = base64.b64decode(attrs["src"].split(",", 1)[1])
            assert int(attrs["width"]) == round(png_width(png) * CSS_PX_PER_INCH / DPI)
            assert int(attrs["width"]) <= 1132  # the body's 1180 px less its padding


# Appended to a copy of the report: the page's width against the window's, and where the first
# check's verdict sits, for --dump-dom to read.
LAYOUT_SCRIPT = """<script>window.addEventListener("load", () => {
  const cell = document.querySelector("table.checks tbody tr td");
  const r = cell.getBoundingClientRect();
  const out = document.createElement("pre"); out.id = "layout-check";
  out.textContent = JSON.stringify({page: document.documentElement.scrollWidth, window: window.innerWidth,
    first: cell.textContent, left: r.left, right: r.right});
  document.body.appendChild(out); });</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium; CI's .ci/run installs it)")
def test_at_800_px_nothing_overflows_and_the_verdict_comes_first(report, tmp_path) -> None:
    """Issue 25 (12): at 800 px the claims table ran off the page with the verdict off-screen."""
    _, built, _ = report
    page = tmp_path / "layout.html"
    page.write_text(built.index.read_text().replace("</body>", LAYOUT_SCRIPT + "</body>"))
    done = _chromium("--window-size=800,1200", "--dump-dom", page.as_uri(), cwd=tmp_path)
    match = re.search(r'<pre id="layout-check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no layout report in the dumped DOM; chromium said: {done.stderr[-2000:]}"
    layout = json.loads(match.group(1).replace("&quot;", '"'))
    assert layout["window"] == 800 and layout["page"] <= layout["window"], layout
    assert layout["first"] == "not reproduced" and 0 <= layout["left"] and layout["right"] < 200, layout


def test_a_claims_entry_says_what_its_statistic_measures(report) -> None:
    """Issue 25 (15): a share of 2.46 against >= 0.5 needs the statistic's description beside it."""
    _, built, experiment = report
    text = built.index.read_text()
    described = build.check_claims(experiment, experiment.run("quick"))["statistic_description"].iloc[0]
    assert described and f"statistic: {described}" in text
