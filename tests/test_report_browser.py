"""The report in a real browser: headless Chromium (Debian's, driven by Playwright) opens index.html
from disk; it must load without console errors or network requests, decode every image, show one
table row per variant, sort the table, run no injected script, fit a laptop screen, and print.

`make test` installs Chromium (apt-get, as root) before the suite; the test skips, saying why, only
where Chromium is not installed.
"""

import os
import shutil
from pathlib import Path

import pytest

from reglab.report import write_report
from report_helpers import EVIL, compare_study, run_all

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def _chromium():
    for candidate in (os.environ.get("REGLAB_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed: `apt-get install chromium` (what `make test` does as root), "
                    "or point REGLAB_CHROMIUM at a Chromium binary")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright is not installed: pip install -e '.[dev]' (or `make test`)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("browser")
    raw = compare_study(name="browser-study", seeds=3, epochs=15)
    run = run_all(root / "s.db", raw)[raw["name"]]
    write_report(raw["name"], root / "s.db", root / "report")
    return root / "report" / "index.html", run


def test_report_opens_cleanly_in_chromium(browser, report, tmp_path):
    index, run = report
    page = browser.new_page(viewport={"width": 1366, "height": 800})
    problems, requests, dialogs = [], [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(index.as_uri(), wait_until="load")

    images = page.eval_on_selector_all(
        "img", "els => els.map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
    assert len(images) >= 4
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images

    names = [v.name for v in run.study.variants]
    cells = page.eval_on_selector_all("#stats tbody tr", "rows => rows.map(r => r.cells[0].textContent.trim())")
    assert sorted(cells) == sorted(names) and len(cells) == len(names)
    assert EVIL in cells                                     # shown as text, not run
    assert page.title().startswith("browser-study")
    assert page.evaluate("document.querySelectorAll('script').length") == 1

    # the inline sorting script runs under the page's CSP: sorting by test score orders the rows
    page.click("#stats thead th:nth-child(4)")
    scores = page.eval_on_selector_all("#stats tbody tr", "rows => rows.map(r => parseFloat(r.cells[3].dataset.sort))")
    assert scores == sorted(scores) and len(scores) == len(names)
    page.click("#stats thead th:nth-child(4)")
    assert page.eval_on_selector_all("#stats tbody tr",
                                     "rows => rows.map(r => parseFloat(r.cells[3].dataset.sort))") == sorted(scores, reverse=True)

    # readable on a laptop: nothing wider than the window (wide tables scroll inside their box)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 50_000
    if os.environ.get("REGLAB_SCREENSHOTS"):                 # keep it to look at
        Path(os.environ["REGLAB_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["REGLAB_SCREENSHOTS"]) / "report.png")
    pdf = tmp_path / "report.pdf"
    page.pdf(path=str(pdf), format="A4")                   # print
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 50_000
    page.close()

    assert problems == [] and requests == [] and dialogs == []
