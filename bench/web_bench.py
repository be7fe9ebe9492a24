"""Slide page timings in Debian's Chromium on loopback against a real server.

    python bench/web_bench.py [--width 40000 --height 30000] [--annotations 100000] [--repeats 3]

Measures (ms after navigation start, from the page's own marks in window.slidePage):
first full viewport drawn (OpenLayers rendercomplete after every visible tile decoded),
a viewport drawn after a pan at the second finest level (one viewport width, so every tile is
new; setCenter to rendercomplete), and showing N annotations (points) as an overlay, whole
slide in view (metadata + bulk data fetched, decoded and drawn; -1 means it never completed).
The slide comes from /work/shared/tools/make_wsi.py (or ../shared relative to the repo).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "web")]

from conftest import IDENTIFIED, Server, make_wsi  # noqa: E402
from test_results_support import api, stow  # noqa: E402
from harness import browser  # noqa: E402

ZOOM_JS = """() => new Promise((resolve) => {
  const map = window.slidePage.map, view = map.getView()
  map.once('rendercomplete', () => resolve(true))
  view.setZoom(view.getMaxZoom() - 1)
  setTimeout(() => resolve(false), 60000)
})"""
PAN_JS = """(direction) => new Promise((resolve) => {
  const map = window.slidePage.map, view = map.getView(), size = map.getSize()
  const c = view.getCenter(), t0 = performance.now()
  map.once('rendercomplete', () => resolve(performance.now() - t0))
  view.setCenter([c[0] + direction * size[0] * view.getResolution(), c[1]])
  setTimeout(() => resolve(-1), 60000)
})"""
OVERLAY_JS = """(sop) => new Promise((resolve) => {
  const map = window.slidePage.map, view = map.getView(), t0 = performance.now()
  view.setZoom(view.getMinZoom())
  const result = window.slidePage.results.find((r) => r.sop_instance === sop)
  const container = document.getElementById('viewer')
  container.addEventListener('dicommicroscopyviewer_loading_ended', () => {
    map.once('rendercomplete', () => resolve(performance.now() - t0))
    map.render()
  }, { once: true })
  window.slidePage.overlays.set(result, true)
  setTimeout(() => resolve(-1), 120000)
})"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=40000)
    ap.add_argument("--height", type=int, default=30000)
    ap.add_argument("--annotations", type=int, default=100000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_wsi(root / "slide", "--width", str(args.width), "--height", str(args.height))
        paths = sorted(p for p in (root / "slide").rglob("*.dcm"))
        level0 = max(paths, key=lambda p: p.stat().st_size)
        server = Server(root / "server", IDENTIFIED, dimse=False).start()
        try:
            status, body = stow(server, paths)
            assert status == 200, body
            import pydicom

            series = str(pydicom.dcmread(level0, stop_before_pixels=True).SeriesInstanceUID)
            import random

            rnd = random.Random(1)
            cells = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [
                rnd.uniform(0, args.width), rnd.uniform(0, args.height)]}, "properties": {"classification": "Cell"}}
                for _ in range(args.annotations)]
            status, made = api(server, "POST", f"/slides/{series}/annotations",
                               {"geojson": {"type": "FeatureCollection", "features": cells},
                                "algorithm": {"name": "bench", "version": "1"}})
            assert status == 201, made
            cold, warm, pans, overlay = [], [], [], []
            with browser() as b:
                for _ in range(args.repeats):
                    context = b.new_context(viewport={"width": 1280, "height": 860})  # empty cache
                    for visit in range(3):  # then the same browser again: scripts cached, as for a returning user
                        page = context.new_page()
                        page.goto(f"{server.url}/slides/{series}")
                        page.wait_for_function("window.slidePage && window.slidePage.firstDrawn !== null "
                                               "&& window.slidePage.results", timeout=120000)
                        (warm if visit else cold).append(page.evaluate("window.slidePage.firstDrawn"))
                        if visit == 2:
                            page.evaluate(ZOOM_JS)  # pans near full resolution: every tile new
                            pans += [page.evaluate(PAN_JS, d) for d in (1, 1, -3, -1)]  # each to unseen tiles
                            overlay.append(page.evaluate(OVERLAY_JS, made["sop_instance"]))
                        page.close()
                    context.close()
            print(f"level 0: {args.width} x {args.height} px, {level0.stat().st_size / 1e6:.0f} MB file; "
                  f"files {', '.join(sorted(files))}")
            for name, values in (("first full viewport, empty cache (ms after navigation)", cold),
                                 ("first full viewport, scripts cached (ms after navigation)", warm),
                                 ("viewport after a pan (ms)", pans),
                                 (f"{args.annotations:,} annotations as an overlay (ms)", overlay)):
                print(f"{name}: median {statistics.median(values):.0f}, min {min(values):.0f}, "
                      f"max {max(values):.0f} (n={len(values)})")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
