"""Open a card's HTML in headless Chromium (Debian's `chromium`, installed by .ci/run) and report what the
page drew and which script errors it raised. Offline and light: one `chromium --headless --dump-dom`
process; a probe script put first in <head> records uncaught errors, rejected promises and console.error
calls into an attribute of the dumped DOM, and Chromium's own console log is kept as well."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

PROBE = """<script>
(() => {
  const errors = [];
  const keep = (message) => {
    errors.push(String(message));
    document.documentElement.setAttribute("data-script-errors", JSON.stringify(errors));
  };
  document.documentElement.setAttribute("data-script-errors", "[]");
  window.addEventListener("error", (event) => keep(event.message || "error loading " + event.target));
  window.addEventListener("unhandledrejection", (event) => keep("unhandled rejection: " + event.reason));
  const consoleError = console.error;
  console.error = (...args) => { keep(args.join(" ")); consoleError.apply(console, args); };
})();
</script>"""

VEGA_CHART = re.compile(r'<svg[^>]*class="marks[^"]*"[^>]*>.*?</svg>', re.DOTALL)
# A drawn mark: a group of bars, lines, points or areas holding at least one path with geometry.
DRAWN_MARK = re.compile(r'class="mark-(?:rect|line|symbol|area)[^"]*"[^>]*>\s*<path[^>]*\sd="M', re.DOTALL)


@dataclass(frozen=True)
class RenderedPage:
    dom: str
    script_errors: list[str]
    console_errors: list[str]  # what Chromium logged as uncaught or console errors
    charts: int  # Vega charts on the page
    drawn_charts: int  # charts with at least one mark drawn


def chromium() -> str:
    """The Chromium binary; a skip with the install command where it is missing (CI requires it)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("POSTMODERN_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required here (POSTMODERN_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return binary


def render(html: str, workdir: Path, timeout: float = 120) -> RenderedPage:
    """Load the page in headless Chromium, let its scripts run (virtual time), and read the DOM back."""
    workdir.mkdir(parents=True, exist_ok=True)
    page = workdir / "page.html"
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # root in containers and CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={workdir / 'profile'}",
            "--virtual-time-budget=15000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"chromium failed: {result.stderr[-2000:]}"
    dom = result.stdout
    recorded = re.search(r'data-script-errors="([^"]*)"', dom)
    assert recorded, "the probe did not run: the page's scripts never started"
    script_errors = json.loads(recorded.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console_errors = [
        line for line in result.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
    ]
    charts = VEGA_CHART.findall(dom)
    return RenderedPage(
        dom, script_errors, console_errors, len(charts), sum(1 for chart in charts if DRAWN_MARK.search(chart))
    )


def card_html(components: list) -> str:
    """The page Metaflow writes for a blank card holding these components."""
    from metaflow.plugins.cards.card_modules.basic import BlankCard

    task = SimpleNamespace(pathspec="RecommenderFlow/1/test_model/2")
    return BlankCard(components=[component.render() for component in components]).render(task)
