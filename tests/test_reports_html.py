"""The HTML report as a document: well-formed (every tag closed, in order), unique ids, a table of
contents whose links all resolve, collapsible sections per problem and checkpoint, sortable tables
with numeric sort keys; and, where Chromium is installed, in a real headless browser: the inline
script sorts and filters a table, and no table pushes the page wider than a 1400 px window.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sbn_bench.reports import write_report
from sbn_bench.reports.html import style

DATA = Path(__file__).parent / "data"
RUN_A, RUN_B = DATA / "run_a", DATA / "run_b"
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "source", "track", "wbr"})


class WellFormed(HTMLParser):
    """Checks that every element is closed, in order (no implicit closing relied upon), and
    collects ids, links, tables and details."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.details: list[dict[str, str | None]] = []
        self.sort_keys: list[str] = []
        self.tables: list[dict[str, str | None]] = []
        self.filters: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag == "a" and a.get("href", "").startswith("#"):
            self.hrefs.append(a["href"][1:])
        if tag == "details":
            self.details.append(a)
        if tag == "table":
            self.tables.append(a)
        if tag == "td" and "data-v" in a:
            self.sort_keys.append(a["data-v"] or "")
        if tag == "input" and "filter" in (a.get("class") or ""):
            self.filters.append(a.get("data-table") or "")
        if tag not in VOID:
            self.stack.append((tag, self.getpos()[0]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.errors.append(f"<{tag}/> self-closed at line {self.getpos()[0]}")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"</{tag}> closes a void element at line {self.getpos()[0]}")
        elif not self.stack or self.stack[-1][0] != tag:
            open_ = self.stack[-1] if self.stack else None
            self.errors.append(f"</{tag}> at line {self.getpos()[0]} closes {open_}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html")
    return write_report(RUN_A, RUN_B, formats=("html",), out_dir=out)["html"]


@pytest.fixture(scope="module")
def parsed(report: Path) -> WellFormed:
    p = WellFormed()
    p.feed(report.read_text(encoding="utf-8"))
    p.close()
    return p


def test_every_element_is_closed_in_order(parsed: WellFormed) -> None:
    assert parsed.errors == [], parsed.errors[:5]
    assert parsed.stack == [], f"unclosed: {parsed.stack[:5]}"


def test_the_checker_catches_a_malformed_document() -> None:
    p = WellFormed()
    p.feed("<div><p>text</div></p><span>")
    assert p.errors and p.stack


def test_ids_are_unique_and_every_contents_link_resolves(parsed: WellFormed) -> None:
    assert len(parsed.ids) == len(set(parsed.ids)), sorted(i for i in parsed.ids
                                                          if parsed.ids.count(i) > 1)
    assert parsed.hrefs, "a table of contents"
    assert set(parsed.hrefs) <= set(parsed.ids), set(parsed.hrefs) - set(parsed.ids)
    for anchor in ("headline", "across-checkpoints", "results-by-problem-and-checkpoint",
                   "comparison-with-the-baseline"):
        assert anchor in parsed.hrefs


def test_problems_and_checkpoints_are_collapsible(parsed: WellFormed, report: Path) -> None:
    ids = {d.get("id") for d in parsed.details}
    assert {"tiny-2-3-2-1", "tiny-2-3-2-1--checkpoint-init", "tiny-2-3-2-1--checkpoint-gd30"} <= ids
    text = report.read_text(encoding="utf-8")
    assert text.count("<details") == text.count("</details>") == len(parsed.details)
    assert "<summary><h3>tiny-2-3-2-1</h3></summary>" in text


def test_tables_are_sortable_with_numeric_keys_and_long_ones_filterable(parsed: WellFormed) -> None:
    data = [t for t in parsed.tables if t.get("class") != "facts"]  # the run facts: key/value
    assert data and all("sortable" in (t.get("class") or "") for t in data)
    assert parsed.sort_keys and all(float(v) == float(v) for v in parsed.sort_keys)
    table_ids = {t.get("id") for t in parsed.tables}
    assert parsed.filters and set(parsed.filters) <= table_ids


def test_text_cells_wrap_and_tables_scroll_in_their_own_box() -> None:
    css = style()
    rules = {sel.strip(): body for sel, body in (r.split("{", 1) for r in css.split("}") if "{" in r)}
    nowrap = [sel for sel, body in rules.items() if "nowrap" in body]
    assert nowrap == ["td.n"], nowrap  # numbers only: text cells (td.l, th) wrap
    assert "overflow-x: auto" in rules[".table-wrap"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = """
<script>
(function () {
  var table = document.querySelector("table.sortable[id^='summary']");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var col = heads.findIndex(function (h) { return h.textContent === "rrmse M=1"; });
  heads[col].click();
  var asc = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
    return parseFloat(r.cells[col].getAttribute("data-v")); });
  heads[col].click();
  var desc = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
    return parseFloat(r.cells[col].getAttribute("data-v")); });
  var input = document.querySelector("input.filter[data-table='" + table.id + "']");
  input.value = "arm";
  input.dispatchEvent(new Event("input"));
  var shown = Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; })
    .map(function (r) { return r.cells[1].textContent; });
  location.hash = "#tiny-2-3-2-1--checkpoint-gd30";
  window.dispatchEvent(new HashChangeEvent("hashchange"));
  var opened = document.getElementById("tiny-2-3-2-1--checkpoint-gd30").open;
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  var wide = Array.prototype.filter.call(document.querySelectorAll(".table-wrap"), function (w) {
    return w.scrollWidth > w.clientWidth + 1; }).map(function (w) { return w.querySelector("table").id; });
  document.body.setAttribute("data-probe", JSON.stringify({asc: asc, desc: desc, shown: shown,
    opened: opened, width: document.documentElement.scrollWidth, window: window.innerWidth,
    wide: wide}));
}());
</script>
"""


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed")
def test_in_a_real_browser_tables_sort_and_filter_and_the_page_fits_1400px(report: Path,
                                                                            tmp_path: Path) -> None:
    page = tmp_path / "probe.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,2000",
             "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    marker = 'data-probe="'
    assert marker in res.stdout, "the probe did not run: " + res.stderr[-1000:]
    raw = res.stdout.split(marker, 1)[1].split('"', 1)[0]
    probe = json.loads(raw.replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["asc"] == sorted(probe["asc"]) and probe["desc"] == sorted(probe["desc"], reverse=True)
    assert len(probe["asc"]) > 10 and probe["asc"] != probe["desc"]
    assert probe["shown"] and set(probe["shown"]) == {"arm"}
    assert probe["opened"] is True, "a link to a closed section opens it"
    assert probe["width"] <= probe["window"] <= 1400, probe
    assert probe["wide"] == [], f"tables wider than the page at 1400 px: {probe['wide']}"
