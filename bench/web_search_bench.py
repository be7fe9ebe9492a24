"""Search page benchmark: time to results at N indexed slides, in Debian's Chromium on loopback.

The index is filled with N synthetic slide documents (bench/index_bench.py's generator: varied
copies of real ``build_document`` outputs, 20 collections, 8 organs, 4 stains, 4 scanners), then a
real ``slidearchive serve`` answers the page and ``/api/search`` from that index. Measured:

- open: navigation start to results drawn (hits, facet counts and pager on screen; the page's
  own mark ``window.searchPage.readyAt``), a fresh tab per query, the browser warm;
- refine: a facet value clicked on a loaded page to the new results drawn;
- api: the page's own request (``/api/search`` with its 8 facets) from Python, for comparison.

Thumbnails load after the results (synthetic documents have no pixels; their 404s are not timed).

    python bench/web_search_bench.py                                   # 1,000,000 slides, Elasticsearch
    python bench/web_search_bench.py --docs 100000 --backend embedded
"""
from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "web"), str(REPO / "bench")]

from conftest import Server  # noqa: E402
from harness import CHROMIUM_ARGS, chromium_path  # noqa: E402
from index_bench import STAINS, TERMS, percentiles, start_node, synthetic  # noqa: E402

from web.search import FACETS  # noqa: E402

ORGANS = ["SCT:64033007", "SCT:10200004", "SCT:39607008", "SCT:76752008", "SCT:71854001", "SCT:41216001"]


def fill(index, count: int, batch: int = 2000) -> float:
    """Index ``count`` documents through the reindex path; seconds taken."""
    index.ensure()
    rebuild = index.begin_rebuild()
    started, buffer = time.perf_counter(), []
    for doc in synthetic(count):
        buffer.append(doc)
        if len(buffer) >= batch:
            assert rebuild.upsert(buffer) == []
            buffer = []
    if buffer:
        rebuild.upsert(buffer)
    rebuild.commit()
    index.refresh()
    assert index.count() == count, (index.count(), count)
    return time.perf_counter() - started


def page_queries(rnd: random.Random) -> str:
    """What people type and click: free text, a facet or two, sometimes a sort."""
    params: list[tuple[str, str]] = [("q", rnd.choice(TERMS))]
    if rnd.random() < 0.7:
        params.append(("specimen.stain_codes", rnd.choice(STAINS)))
    if rnd.random() < 0.5:
        params.append(("collection", f"collection-{rnd.randrange(20)}"))
    if rnd.random() < 0.3:
        params.append(("sort", "-study.date"))
    return urllib.parse.urlencode(params)


def api_params(query: str) -> list[tuple[str, str]]:
    return [*urllib.parse.parse_qsl(query), ("facet", ",".join(f for f, _ in FACETS)), ("facet_size", "25")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=("elasticsearch", "embedded"), default="elasticsearch")
    ap.add_argument("--queries", type=int, default=30, help="page opens (and as many facet clicks) timed")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="web-search-bench-"))
    node = server = None
    try:
        config = ""
        if args.backend == "elasticsearch":
            from indexer.config import IndexConfig
            from indexer.elastic import ElasticIndex

            node = start_node(work / "es-node")
            index = ElasticIndex(IndexConfig(backend="elasticsearch", urls=(node.url,), request_timeout=120))
            config = f'[index]\nbackend = "elasticsearch"\nurls = ["{node.url}"]\n'
        else:
            from indexer.embedded import EmbeddedIndex

            (work / "server" / "data").mkdir(parents=True)
            index = EmbeddedIndex(work / "server" / "data" / "index.sqlite")  # where the server looks
        print(f"indexing {args.docs:,} documents into {args.backend}...", file=sys.stderr, flush=True)
        index_s = fill(index, args.docs)
        index.close()
        server = Server(work / "server", config, dimse=False).start(timeout=120)

        rnd = random.Random(7)
        queries = [page_queries(rnd) for _ in range(args.queries)]
        api_times = []
        for query in queries:
            t = time.perf_counter()
            r = requests.get(f"{server.url}/api/search", params=api_params(query), timeout=120)
            api_times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        open_ms, refine_ms, totals = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            warm = context.new_page()
            warm.goto(f"{server.url}/")  # static files cached, as for anyone who has used the page before
            warm.wait_for_function("window.searchPage && window.searchPage.ready", timeout=120000)
            for query in queries:
                page = context.new_page()
                page.goto(f"{server.url}/?{query}")
                page.wait_for_function("window.searchPage.ready", timeout=120000)
                open_ms.append(page.evaluate("window.searchPage.readyAt"))
                totals.append(page.evaluate("window.searchPage.lastResult ? window.searchPage.lastResult.total : -1"))
                box = page.locator('.facet[data-field="scanner.manufacturer"] input:not([disabled]):not(:checked)')
                if box.count():  # a search with hits: narrow it to one scanner
                    t0 = page.evaluate("performance.now()")
                    box.first.click()
                    page.wait_for_function("window.searchPage.ready", timeout=120000)
                    refine_ms.append(page.evaluate("window.searchPage.readyAt") - t0)
                page.close()
            browser.close()
    finally:
        if server is not None:
            server.stop()
        if node is not None:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)

    api = percentiles(api_times)
    print(f"\nsearch page, {args.docs:,} synthetic slides in {args.backend} (indexed in {index_s:,.0f} s), "
          f"{args.queries} queries (free text + 0-2 facet filters, 8 facets counted), Chromium on loopback")
    print(f"{'':<34}{'p50':>10}{'p95':>10}")
    print(f"{'open: navigation to results':<34}{statistics.median(open_ms):>8.0f}ms{percentiles([x / 1000 for x in open_ms])[1]:>8.0f}ms")
    print(f"{'refine: facet click to results':<34}{statistics.median(refine_ms):>8.0f}ms"
          f"{percentiles([x / 1000 for x in refine_ms])[1]:>8.0f}ms")
    print(f"{'api: /api/search alone':<34}{api[0]:>8.0f}ms{api[1]:>8.0f}ms")
    print(f"median hits per query: {statistics.median(totals):,.0f}")
    print(f"reproduce: python bench/web_search_bench.py --docs {args.docs} --backend {args.backend} "
          f"--queries {args.queries}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
