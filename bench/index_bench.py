"""Index benchmark: bulk-index N synthetic slide documents into each backend, then time searches.

Reports, per backend: indexing throughput (documents/s, through the reindex path:
new generation, bulk, swap), and p50/p95 latency of
  - a typical search: one free-text term + two filters + three facets, 20 hits;
  - a study-level QIDO: a selective match (PatientID, AccessionNumber, or a
    fuzzy PatientName prefix within a date range) answered by ``qido_uids``.

Documents are varied copies of a pool of real ``build_document`` outputs (building
a million pydicom datasets would measure pydicom, not the index).

    python bench/index_bench.py --docs 1000000                  # starts its own ES node
    python bench/index_bench.py --docs 100000 --es-url http://127.0.0.1:9200
    python bench/index_bench.py --docs 50000 --backends embedded

``--worker 200,5000`` measures instead the index worker's CPU per stored instance (issue 9
item 4): small instances stored through ``Archive.store_file`` into one series of that size,
the worker (embedded index, headers read from the stored files as ``serve`` does) applying
the outbox after every ``--per-step`` instances, its thread's CPU (``time.thread_time``)
over the last ``--measure`` instances divided by their number:

    python bench/index_bench.py --worker 200,5000 --per-step 1,50 --measure 100
"""
from __future__ import annotations

import argparse
import copy
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.base import Unanswerable  # noqa: E402
from indexer.search import parse_search  # noqa: E402
from indexer.synthetic import documents  # noqa: E402

TERMS = ["kidney", "liver", "lung", "breast", "colon", "prostate", "stomach", "skin", "biopsy", "stain"]
MAKERS = ["Acme Imaging", "Leica Biosystems", "Hamamatsu", "3DHISTECH"]
STAINS = ["SCT:12710003", "SCT:406972007", "SCT:255176008", "SCT:13958009"]


def synthetic(count: int, seed: int = 1, pool_size: int = 2000) -> Iterator[dict[str, Any]]:
    """``count`` distinct documents: study/series/patient identity and dates vary per document."""
    pool = list(documents(pool_size, seed))
    rnd = random.Random(seed)
    for n in range(count):
        doc = copy.deepcopy(pool[n % pool_size])
        study = n // 3
        patient = study // 2
        date = f"{2005 + study % 20}{1 + study % 12:02d}{1 + study % 28:02d}"
        series_uid, study_uid = f"2.25.{7_000_000_000 + n}", f"2.25.{8_000_000_000 + study}"
        doc["series_uid"], doc["study_uid"] = series_uid, study_uid
        doc["collection"] = f"collection-{rnd.randrange(20)}"
        doc["patient"]["id"] = f"PSEUDO-{patient:08d}"
        doc.setdefault("study", {})["date"] = date
        q = doc["qido"]
        q.update(SeriesInstanceUID=series_uid, StudyInstanceUID=study_uid, PatientID=f"PSEUDO-{patient:08d}",
                 StudyDate=date, SeriesDate=date, AccessionNumber=f"ACC{study:09d}",
                 PatientName=f"{['SMITH', 'DOE', 'MULLER', 'GARCIA', 'NGUYEN'][patient % 5]}^P{patient}")
        yield doc


def typical_search(rnd: random.Random) -> list[tuple[str, str]]:
    return [("q", rnd.choice(TERMS)), ("scanner.manufacturer", rnd.choice(MAKERS)),
            ("specimen.stain_codes", rnd.choice(STAINS)),
            ("facet", "collection,specimen.anatomy_codes,magnification"), ("size", "20")]


def study_qido(rnd: random.Random, count: int) -> tuple[list[tuple[str, str]], str]:
    study = rnd.randrange(max(count // 3, 1))
    patient = study // 2
    kind = rnd.randrange(3)
    if kind == 0:
        return [("PatientID", f"PSEUDO-{patient:08d}")], "PatientID"
    if kind == 1:
        return [("AccessionNumber", f"ACC{study:09d}")], "AccessionNumber"
    year = 2005 + study % 20
    month = 1 + study % 12
    name = ["smi", "doe", "mul", "gar", "ngu"][patient % 5]
    return [("PatientName", name), ("fuzzymatching", "true"),
            ("StudyDate", f"{year}{month:02d}01-{year}{month:02d}28")], "PatientName~+StudyDate"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1000, p95 * 1000


def bench_backend(name: str, index: Any, count: int, batch: int, queries: int) -> dict[str, Any]:
    from archive.catalog.query import parse_qido

    index.ensure()
    rebuild = index.begin_rebuild()
    started = time.perf_counter()
    buffer: list[dict[str, Any]] = []
    gen_time = 0.0
    g0 = time.perf_counter()
    for doc in synthetic(count):
        buffer.append(doc)
        if len(buffer) >= batch:
            gen_time += time.perf_counter() - g0
            assert rebuild.upsert(buffer) == []
            buffer = []
            g0 = time.perf_counter()
    gen_time += time.perf_counter() - g0
    if buffer:
        rebuild.upsert(buffer)
    rebuild.commit()
    index.refresh()
    elapsed = time.perf_counter() - started - gen_time
    assert index.count() == count, (index.count(), count)

    rnd = random.Random(42)
    search_times, hits = [], 0
    for _ in range(queries):
        request = parse_search(typical_search(rnd))
        t = time.perf_counter()
        result = index.search(request)
        search_times.append(time.perf_counter() - t)
        hits += result.total
    rnd = random.Random(43)
    qido_times, refused, matched = [], 0, 0
    by_kind: dict[str, list[float]] = {}
    for _ in range(queries):
        params, kind = study_qido(rnd, count)
        query = parse_qido("study", params)
        t = time.perf_counter()
        try:
            matched += len(index.qido_uids("study", query.matches, query.fuzzy, 20_000))
        except Unanswerable:
            refused += 1
        qido_times.append(time.perf_counter() - t)
        by_kind.setdefault(kind, []).append(qido_times[-1])
    return {"backend": name, "docs": count, "index_s": elapsed, "docs_per_s": count / elapsed,
            "search": percentiles(search_times), "qido": percentiles(qido_times),
            "avg_hits": hits / queries, "avg_qido_matches": matched / max(queries - refused, 1),
            "qido_refused": refused, "qido_by_kind": {k: percentiles(v) for k, v in by_kind.items()}}


def start_node(home: Path) -> Any:
    sys.path.insert(0, str(REPO / "tests"))
    from es_node import EsNode, runner_missing

    reason = runner_missing()
    if reason:
        raise SystemExit(f"cannot start Elasticsearch: {reason}")
    return EsNode(home, heap="1g").start()


def worker_cpu(size: int, per_step: int, measure: int, workdir: Path) -> dict[str, float]:
    """The index worker's CPU (ms) per instance while a series grows to ``size`` small instances.

    Returns ``cold`` (the first build of ``size - measure`` instances, per instance) and ``step``
    (the last ``measure`` instances applied ``per_step`` at a time, per instance).
    """
    sys.path.insert(0, str(REPO / "bench"))
    import dataset

    from archive.catalog import Catalog
    from archive.config import load_settings
    from archive.ingest import Origin
    from archive.service import Archive
    from indexer.embedded import EmbeddedIndex
    from indexer.state import IndexState
    from indexer.worker import IndexWorker

    data = workdir / f"worker-{size}-{per_step}"
    archive = Archive(load_settings(None, data_dir=data))
    files = dataset.make_small_instances(data / "incoming", size)
    catalog = Catalog(archive.settings.catalog_path, archive.storage.path)
    index = EmbeddedIndex(data / "index.sqlite")
    worker = IndexWorker(catalog, index, IndexState(data / "index-state.sqlite"))
    measure = min(measure, size)
    for f in files[:size - measure]:
        assert archive.store_file(f, Origin("import")).status == "stored"
    t = time.thread_time()
    worker.catch_up()
    cold = (time.thread_time() - t) * 1000 / max(size - measure, 1)
    spent = 0.0
    rest = files[size - measure:]
    for i in range(0, len(rest), per_step):
        for f in rest[i:i + per_step]:
            assert archive.store_file(f, Origin("import")).status == "stored"
        t = time.thread_time()
        worker.step()
        spent += time.thread_time() - t
    series_uid = next(iter(catalog.iter_series_uids()))
    assert index.count() == 1 and index.get(series_uid)["instance_count"] == size  # all of them, once
    index.close()
    catalog.close()
    return {"cold": cold, "step": spent * 1000 / max(measure, 1)}


def main_worker(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="index-worker-bench-", dir="/tmp"))
    try:
        print(f"{'series size':>12}{'per step':>10}{'cold ms/inst':>14}{'step ms/inst':>14}")
        for size in (int(x) for x in args.worker.split(",")):
            for per_step in (int(x) for x in args.per_step.split(",")):
                r = worker_cpu(size, per_step, args.measure, workdir)
                print(f"{size:>12}{per_step:>10}{r['cold']:>14.3f}{r['step']:>14.3f}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("CPU of the index worker's thread (time.thread_time) per stored instance; cold = first build of the "
          "series minus the measured instances, step = the last --measure instances, --per-step at a time")
    print(f"reproduce: python bench/index_bench.py --worker {args.worker} --per-step {args.per_step} "
          f"--measure {args.measure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help="series sizes: measure the index worker's CPU per instance instead")
    parser.add_argument("--per-step", default="1,50", help="with --worker: instances stored between steps")
    parser.add_argument("--measure", type=int, default=100, help="with --worker: instances measured")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--backends", default="embedded,elasticsearch")
    parser.add_argument("--es-url", help="use this node instead of starting one from indexer/es-runner")
    parser.add_argument("--batch", type=int, default=2000, help="documents per bulk request")
    parser.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    parser.add_argument("--workdir", type=Path, help="where the embedded index / node data go (default: temp)")
    args = parser.parse_args(argv)
    if args.worker:
        return main_worker(args)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="index-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results, node = [], None
    try:
        for backend in args.backends.split(","):
            print(f"indexing {args.docs} documents into {backend}...", file=sys.stderr, flush=True)
            if backend == "embedded":
                from indexer.embedded import EmbeddedIndex

                index: Any = EmbeddedIndex(workdir / "bench-index.sqlite")
            else:
                from indexer.config import IndexConfig
                from indexer.elastic import ElasticIndex

                url = args.es_url
                if url is None:
                    node = start_node(workdir / "es-node")
                    url = node.url
                index = ElasticIndex(IndexConfig(backend="elasticsearch", urls=(url,), index_prefix="bench-",
                                                 request_timeout=120))
            results.append(bench_backend(backend, index, args.docs, args.batch, args.queries))
            index.close()
    finally:
        if node is not None:
            node.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{args.docs:,} synthetic slide documents, bulk {args.batch}, {args.queries} timed queries of each kind")
    header = (f"{'backend':<14}{'index docs/s':>14}{'index time':>12}{'search p50':>12}{'search p95':>12}"
              f"{'qido p50':>10}{'qido p95':>10}{'avg hits':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['backend']:<14}{r['docs_per_s']:>14,.0f}{r['index_s']:>11,.1f}s{r['search'][0]:>10.1f}ms"
              f"{r['search'][1]:>10.1f}ms{r['qido'][0]:>8.1f}ms{r['qido'][1]:>8.1f}ms{r['avg_hits']:>10,.0f}")
    for r in results:
        kinds = ", ".join(f"{k} {p50:.1f} / {p95:.1f} ms" for k, (p50, p95) in sorted(r["qido_by_kind"].items()))
        print(f"qido p50 / p95 by kind, {r['backend']}: {kinds}")
    refused = {r["backend"]: r["qido_refused"] for r in results if r["qido_refused"]}
    if refused:
        print(f"QIDO queries too broad for the index path (answered by the catalog instead): {refused}")
    print("search = 1 free-text term + 2 filters + 3 facets, 20 hits; qido = study level "
          "(PatientID | AccessionNumber | fuzzy PatientName + StudyDate range)")
    print(f"reproduce: python bench/index_bench.py --docs {args.docs} --backends {args.backends} "
          f"--batch {args.batch} --queries {args.queries}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
