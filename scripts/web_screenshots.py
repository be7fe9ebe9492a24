"""Make docs/search-page.png: the search page over a few stored slides, as a person sees it.

Starts a real server (authentication off, loopback, a temporary data directory), stores six
synthetic slides of three organs in two collections, opens the page in Debian's Chromium and
saves a screenshot (PNG, palette-reduced so it stays small).

    python3 scripts/web_screenshots.py [--out docs/search-page.png]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "web")]

from conftest import IDENTIFIED, Server  # noqa: E402
from harness import CHROMIUM_ARGS, chromium_path  # noqa: E402
from slides import SlideSpec, make_slide  # noqa: E402
from test_datasets_api import stow  # noqa: E402
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
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "search-page.png")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="web-shots-") as tmp:
        root = Path(tmp)
        server = Server(root / "server", IDENTIFIED, dimse=False).start()
        try:
            for n, (code, meaning, description, collection) in enumerate(SLIDES):
                spec = SlideSpec(width=768, height=512, seed=300 + n, label=False, patient_id=f"PAT-{n:04d}",
                                 accession=f"ACC-{n:04d}")
                paths = make_slide(root / f"slide{n}", spec)
                relabel(paths, (code or "76752008", "SCT", meaning), description)
                stow(server, paths, collection)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1200, "height": 820})
                page.goto(f"{server.url}/?q=biopsy&collection=research")  # a refined search: empty values greyed
                page.wait_for_function("window.searchPage && window.searchPage.ready", timeout=60000)
                page.wait_for_function("[...document.querySelectorAll('#hits img.thumb')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)", timeout=60000)
                png = page.screenshot()
                browser.close()
        finally:
            server.stop()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
