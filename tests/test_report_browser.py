"""Open the rendered reports in headless Chromium as a person would: no console error, every image
decodes (naturalWidth > 0), and a full-page screenshot is saved to ``test-output/report/`` at the
repository root (git-ignored) for a human to look at.

Chromium is Debian's ``chromium`` package, installed with apt-get when missing and running as root;
otherwise the tests skip, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

try:  # tests/ is on sys.path under pytest's default import mode
    import browser as _browser
    from test_report import built_reports
except ImportError:  # tests collected as a package
    from tests import browser as _browser
    from tests.test_report import built_reports

SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "report"


@pytest.fixture(scope="module")
def chromium():
    try:
        binary = _browser.find_chromium()
    except _browser.BrowserUnavailable as err:
        pytest.skip(f"headless browser test needs chromium: {err}")
    with _browser.Browser(binary) as b:
        yield b


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    runs = built_reports(tmp_path_factory)  # shared with test_report.py when both run in one session
    return {"starmap_mpfc": runs["starmap"]["report"], "bdtnp_drosophila": runs["bdtnp"]["report"], "summary": runs["summary"]}


@pytest.mark.parametrize("name", ["starmap_mpfc", "bdtnp_drosophila", "summary"])
def test_page_renders_cleanly_in_chromium(chromium, pages, name):
    page = chromium.open(pages[name])
    assert page.console_errors == [], f"console errors in {name}: {page.console_errors}"
    assert page.broken_images == [], f"images that did not decode in {name}: {page.broken_images}"
    n_images = page.evaluate("document.images.length")
    assert n_images == 0 if name == "summary" else n_images >= 3
    # nothing wider than the window: no horizontal scrolling of the page itself
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{name} is {overflow}px wider than a 1280px window"
    # every image is shown at a readable size (not squeezed to a thumbnail)
    narrow = page.evaluate("Array.from(document.images).filter(i => i.getBoundingClientRect().width < 300).map(i => i.alt)")
    assert narrow == [], f"images drawn narrower than 300px: {narrow}"
    shot = page.screenshot(SHOTS / f"{name}.png", full_page=True)
    assert shot.stat().st_size > 10_000


def test_checker_catches_console_errors_and_broken_images(chromium, tmp_path):
    """The checks above are not vacuous: a console error, an uncaught exception and an image that
    does not decode are all reported."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img alt="broken" src="data:image/png;base64,AAAA">'
                   '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    page = chromium.open(bad)
    assert any("boom" in e for e in page.console_errors)
    assert any("undefinedFunction" in e for e in page.console_errors)
    assert page.broken_images == ["broken"]
