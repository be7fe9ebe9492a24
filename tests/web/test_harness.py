"""The browser harness itself: what the page fixture must catch does get caught."""
from __future__ import annotations

from harness import PageErrors, axe_violations, chromium  # noqa: F401


def test_console_errors_and_uncaught_exceptions_are_collected(chromium):
    page = chromium.new_page()
    errors = PageErrors(page)
    page.set_content("<script>console.error('logged failure'); setTimeout(() => { throw new Error('thrown failure') })</script>")
    page.wait_for_timeout(200)
    found = errors.unexpected()
    assert any("logged failure" in e for e in found) and any("thrown failure" in e for e in found)
    assert errors.unexpected("logged failure", "thrown failure") == []
    page.close()


def test_axe_finds_a_violation(chromium):
    page = chromium.new_page()
    page.set_content('<html lang="en"><body><main><img src="data:,"></main></body></html>')  # an image without alt
    assert "image-alt" in {v["id"] for v in axe_violations(page)}
    page.close()
