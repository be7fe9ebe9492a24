"""Helpers for the slide-page tests (no tests here): opening a slide, its pixels, drawing on it."""
from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
from PIL import Image


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
