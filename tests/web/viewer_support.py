"""Helpers for the slide-page tests (no tests here): a real Chromium via Playwright, pixels, drawing."""
from __future__ import annotations

import io
import json
import shutil
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("Debian's chromium is not installed (scripts/test.sh installs it)")


class PageErrors:
    """Uncaught exceptions and console errors of one page: a test expects none unless it says which."""

    def __init__(self, page):
        self.items: list[str] = []
        page.on("pageerror", lambda e: self.items.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.items.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)

    def unexpected(self, *allowed: str) -> list[str]:
        return [e for e in self.items if not any(a in e for a in allowed)]


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--use-gl=swiftshader",
                                                                      "--enable-unsafe-swiftshader"])
        try:
            yield b
        finally:
            b.close()


def open_slide(page, url: str, timeout: float = 60000) -> None:
    """Go to a slide page and wait until its first viewport is fully drawn (or it says why not)."""
    page.goto(url)
    page.wait_for_function("window.slidePage && (window.slidePage.firstDrawn !== null || "
                           "window.slidePage.errors.length > 0)", timeout=timeout)


def viewer_pixels(page, selector: str = "#viewer") -> np.ndarray:
    """What the viewer element shows on screen, as an RGB array (the composited canvases)."""
    png = page.locator(selector).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def tissue_fraction(pixels: np.ndarray) -> float:
    """Share of pixels that are coloured (stained tissue), not white glass or the grey background."""
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float((spread > 40).mean())


def colour_count(pixels: np.ndarray, rgb, tolerance: int = 30) -> int:
    return int((np.abs(pixels - np.asarray(rgb)).max(axis=2) <= tolerance).sum())


def draw_polygon(page, points: list[tuple[float, float]]) -> None:
    """Click the vertices (viewer-relative CSS pixels), then the first again to close."""
    box = page.locator("#viewer").bounding_box()
    for x, y in [*points, points[0]]:
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        page.mouse.up()
        page.wait_for_timeout(150)


def get_json(url: str, token: str | None = None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def axe_violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})")
    return [{"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"]]
