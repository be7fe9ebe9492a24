"""Make docs/search-page.png, docs/compare-page.png and docs/dataset-page.png, as a person sees them.

Starts a real server (authentication off, loopback, a temporary data directory), stores six
synthetic slides of three organs in two collections, releases a dataset of one collection, opens
the pages in Debian's Chromium and saves screenshots (PNG, palette-reduced so they stay small).
The slide page's screenshot (docs/slide-page.png, with an AI overlay switched on) was taken by hand.

    python3 scripts/web_screenshots.py [--out-dir docs]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import pydicom
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "web")]

from conftest import IDENTIFIED, Server  # noqa: E402
from harness import CHROMIUM_ARGS, chromium_path  # noqa: E402
from slides import SlideSpec, make_slide  # noqa: E402
from test_datasets_api import DERM, stow  # noqa: E402
from test_search_page import relabel  # noqa: E402

SLIDES = [  # (organ code, meaning, description, collection)
    (None, "Breast", "Breast core biopsy, H&E", "teaching"),
    ("41216001", "Prostate", "Prostate needle biopsy, H&E", "research"),
    ("64033007", "Kidney", "Kidney biopsy, H&E", "research"),
    (None, "Breast", "Breast excision margin, H&E", "research"),
    ("41216001", "Prostate", "Prostate resection, H&E", "teaching"),
    ("64033007", "Kidney", "Kidney tumour, H&E", "research"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", type=Path, default=REPO / "docs")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="web-shots-") as tmp:
        root = Path(tmp)
        server = Server(root / "server", IDENTIFIED, dimse=False).start()
        shots: dict[str, bytes] = {}
        try:
            series = []
            for n, (code, meaning, description, collection) in enumerate(SLIDES):
                spec = SlideSpec(width=768, height=512, seed=300 + n, label=False, patient_id=f"PAT-{n:04d}",
                                 accession=f"ACC-{n:04d}")
                paths = make_slide(root / f"slide{n}", spec)
                relabel(paths, (code or "76752008", "SCT", meaning), description)
                stow(server, paths, collection)
                series.append(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
            dataset = {**DERM, "id": "research-biopsies", "title": "Synthetic kidney, prostate and breast biopsies",
                       "description": "Generated whole-slide images of four biopsies, H&E stained, to show the page.",
                       "keywords": ["kidney", "prostate", "breast", "H&E"], "collection": "research"}
            for url, body in ((f"{server.url}/api/datasets", dataset),
                              (f"{server.url}/api/datasets/{dataset['id']}/releases", None)):
                answer = requests.post(url, json=body, timeout=60)
                answer.raise_for_status()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 820})
                page.goto(f"{server.url}/?q=biopsy&collection=research")  # a refined search: empty values greyed
                page.wait_for_function("window.searchPage && window.searchPage.ready", timeout=60000)
                page.wait_for_function("[...document.querySelectorAll('#hits img.thumb')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)", timeout=60000)
                shots["search-page.png"] = page.screenshot()
                page.goto(f"{server.url}/compare?series={series[1]}&series={series[2]}")
                page.wait_for_function("window.comparePage && window.comparePage.drawn >= 2", timeout=60000)
                shots["compare-page.png"] = page.screenshot()
                page.goto(f"{server.url}/datasets/{dataset['id']}/v1")
                shots["dataset-page.png"] = page.screenshot()
                browser.close()
        finally:
            server.stop()
    for name, png in shots.items():
        out = args.out_dir / name
        Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(out, optimize=True)
        print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
