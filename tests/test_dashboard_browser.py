"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` package) driven
by Playwright. Skipped, saying why, only where no Chromium or no Playwright is installed.

Screenshots land in the test's tmp dir and, when ``JAXALIGN_ARTIFACTS`` names a folder, are
copied there (CI artefacts).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

from dashboard_fixtures import ReplayWriter, write_reward_model_eval, write_run  # noqa: E402

from jaxalign.cli import main  # noqa: E402
from jaxalign.dashboard.runs import RunSet  # noqa: E402
from jaxalign.dashboard.server import BackgroundServer, create_app  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    if os.environ.get("JAXALIGN_CHROMIUM"):
        return os.environ["JAXALIGN_CHROMIUM"]
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set JAXALIGN_CHROMIUM to a Chrome binary)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def _keep(path: Path) -> None:
    if os.environ.get("JAXALIGN_ARTIFACTS"):
        target = Path(os.environ["JAXALIGN_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def _screenshot(page, path: Path, **options) -> None:
    page.screenshot(path=str(path), **options)
    assert path.stat().st_size > 10_000  # a page, not a blank
    _keep(path)


LATEST_STEP = """() => {
  const plot = document.querySelector('[data-id="reward_kl"] .plot');
  return plot && plot.data ? Math.max(...plot.data.flatMap((t) => Array.from(t.x))) : -1;
}"""


def test_live_dashboard_updates_without_reload_and_browses_completions(browser, tmp_path):
    run_dir = write_run(tmp_path / "runs" / "ppo-kl0.05", range(1, 41))
    write_run(tmp_path / "runs" / "ppo-kl0.5", range(1, 41), kl_coef=0.5)
    write_reward_model_eval(run_dir)
    app = create_app(RunSet([tmp_path / "runs"]), poll_ms=300)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests, navigations, errors = [], [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    with BackgroundServer(app) as url, ReplayWriter(run_dir, first_step=41, last_step=400, interval_s=0.25) as writer:
        page.goto(url)
        page.wait_for_selector('[data-id="reward_kl"][data-drawn]', timeout=30_000)
        page.evaluate("window.__sameDocument = true")
        seen = page.evaluate(LATEST_STEP)
        written = writer.step  # steps from here on were written after the page loaded
        page.wait_for_function(f"({LATEST_STEP})() > {max(seen, written)}", timeout=15_000)
        assert page.evaluate("window.__sameDocument") is True and navigations == [url + "/"]
        _screenshot(page, tmp_path / "dashboard-charts.png")

        page.click('button[data-tab="completions"]')
        page.wait_for_selector("#c-table tbody tr")
        assert "reply 0 at step" in page.inner_text("#c-table tbody")
        page.fill("#c-search", "great")
        page.wait_for_function("""() => { const rows = [...document.querySelectorAll('#c-table tbody tr')];
            return rows.length === 1 && rows[0].innerText.includes('great'); }""")
        page.select_option("#c-step", "all")
        page.wait_for_function("document.querySelectorAll('#c-table tbody tr').length > 3")
        _screenshot(page, tmp_path / "dashboard-completions.png")

        page.click('button[data-tab="evals"]')
        page.wait_for_selector('[data-id="reliability"][data-drawn]')
        assert "hh_test" in page.inner_text("#e-table") and "0.71" in page.inner_text("#e-table")
        _screenshot(page, tmp_path / "dashboard-evals.png")
    page.close()
    assert errors == []
    assert [r for r in requests if not r.startswith(url)] == []  # nothing from a CDN or anywhere else


def test_report_opens_offline_in_the_browser(browser, tmp_path):
    write_run(tmp_path / "runs" / "a", range(1, 61))
    write_run(tmp_path / "runs" / "b", range(1, 61), kl_coef=0.5)
    report = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "runs"), "-o", str(report)]) == 0
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.wait_for_selector('[data-id="trajectory"][data-drawn]', timeout=60_000)
    page.click('button[data-tab="completions"]')
    page.wait_for_selector("#c-table tbody tr")
    assert "reply 0 at step 60" in page.inner_text("#c-table tbody")
    page.fill("#c-search", "GREAT")
    page.wait_for_function("document.querySelectorAll('#c-table tbody tr').length === 1")
    _screenshot(page, tmp_path / "report-completions.png")
    page.close()
    assert requests == [report.as_uri()]  # everything was inside the file


@pytest.mark.slow  # kaleido starts its own Chromium: 10-20 s on a shared 2-core machine
def test_report_png_figures(browser, tmp_path):
    write_run(tmp_path / "runs" / "a", range(1, 61))
    write_run(tmp_path / "runs" / "b", range(1, 61), kl_coef=0.5)
    assert main(["report", str(tmp_path / "runs"), "--png", str(tmp_path / "png")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert {"reward_kl.png", "trajectory.png", "loss.png", "length.png"} <= set(pngs), pngs
    for name in pngs:
        data = (tmp_path / "png" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    _keep(tmp_path / "png" / "reward_kl.png")
