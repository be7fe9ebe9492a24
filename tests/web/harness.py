"""The browser harness of the web tests (fixtures and helpers; no tests here).

Debian's Chromium (``/usr/bin/chromium``, installed by scripts/test.sh) driven by Playwright
from PyPI, no browser download. A test module takes the fixtures with
``from harness import chromium, page  # noqa: F401``:

- ``page`` fails the test at teardown when the page logged a JavaScript console error or threw
  an uncaught exception (a test that provokes one names it: ``page.allow_errors("status of 400")``),
  and saves a screenshot of the page into the test's tmp directory when the test failed,
  printing its path.
- ``assert_accessible(page)`` injects axe-core from ``node_modules`` (package-lock.json) and
  fails on any WCAG 2 A/AA violation.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_ARGS = ["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"]


def chromium_path() -> str:
    """Debian's Chromium; Playwright never downloads a browser of its own here."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("Debian's chromium is not installed (scripts/test.sh installs it with apt-get)")


class PageErrors:
    """Uncaught exceptions and console errors of one page, collected as they happen."""

    def __init__(self, page):
        self.items: list[str] = []
        self.allowed: list[str] = []
        page.on("pageerror", lambda e: self.items.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.items.append(f"console.{m.type}: {m.text} ({m.location.get('url', '')})")
                if m.type == "error" else None)

    def unexpected(self, *allowed: str) -> list[str]:
        allowed = (*self.allowed, *allowed)
        return [e for e in self.items if not any(a in e for a in allowed)]


@contextmanager
def browser():
    """Debian's Chromium under Playwright, closed on exit (the fixture below, and benchmarks)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def chromium():
    with browser() as launched:
        yield launched


@pytest.fixture
def page(chromium, request, tmp_path):
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.errors = PageErrors(page)
    page.allow_errors = lambda *texts: page.errors.allowed.extend(texts)
    failed_before = request.session.testsfailed
    yield page
    try:
        if request.session.testsfailed > failed_before:  # this test's call failed (reported before teardown)
            shot = tmp_path / f"{request.node.name[:80]}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the failed page: {shot}")
        errors = page.errors.unexpected()
    finally:
        context.close()
    if errors:
        pytest.fail("JavaScript errors on the page:\n" + "\n".join(errors), pytrace=False)


def axe_violations(page) -> list[dict]:
    """axe-core's WCAG 2 A and AA violations of the page as it is now."""
    assert AXE.is_file(), "axe-core missing: run npm ci (scripts/test.sh does)"
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})")
    return [{"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"]]


def assert_accessible(page) -> None:
    violations = axe_violations(page)
    assert not violations, f"axe-core violations: {violations}"


def admin_key(server) -> str:
    """An administrator API key made with the CLI for a server not started yet (``server.data_dir`` is created)."""
    server.data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "archive.cli", "keys", "create", "--name", "web test", "--admin",
         "--data-dir", str(server.data_dir), "--config", str(server.config_path)],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
