"""Study QIDO latency against a large catalog: SQLite vs PostgreSQL in one run.

For each size (instances in the catalog) both catalogs are filled with the same generated
rows, as ingest leaves them (5 instances per series, 2 series per study, 2 studies per
patient, one collection), written in bulk (PostgreSQL: COPY; SQLite: one transaction);
then the study-level searches a viewer or pipeline sends are timed in process through
``Catalog.search`` (what QIDO-RS and C-FIND run; the HTTP layer adds the same to both),
interleaved between the two backends so both see the same machine load. Reports p50 and
p95 per query and backend, and the p95 against the first page (limit=100, no key) timed
right after each search on the same backend: what a search costs beyond returning its
page, at the same moment's load. The target is p95 under 50 ms at 10 million instances.

    python bench/catalog_bench.py [--instances 1000000 10000000] [--repeats 200] [--budget 60]
                                  [--backends sqlite postgresql] [--data DIR]

PostgreSQL is Debian's server started by the benchmark in a temporary directory on
loopback (tests/pg_cluster.py: fsync off, 128 MB shared_buffers); SQLite is a file in
the same temporary directory. Both are removed at the end, unless ``--data DIR`` keeps
them there: a later run given the same directory reuses the filled catalogs (filling
10 M instances takes 15-20 minutes per engine on a loaded machine), and opening them
applies the migrations this version added (timed: the upgrade of a large catalog).
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

PER_SERIES, SERIES_PER_STUDY, STUDIES_PER_PATIENT = 5, 2, 2
NAMES = 5000  # distinct family names: NAME0001 ... (a wildcard on one matches ~0.02% of patients)
WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
DAYS = 15 * 365
ROOT = "1.2.826.0.1.3680043.10.1234"


def _date(day: int) -> str:
    return (datetime.date(2010, 1, 1) + datetime.timedelta(days=day)).strftime("%Y%m%d")


def _study(n: int) -> dict:
    uid = f"{ROOT}.{n}"
    date = _date(n * 7919 % DAYS)  # spread over 15 years, neighbours on different days
    return {"uid": uid, "date": date, "time": f"{n % 24:02d}{n % 60:02d}00", "accession": f"A{n:010d}",
            "study_id": f"S{n % 100000}", "description": "Biopsy" if n % 3 else "Resection",
            "attrs": json.dumps({"0020000D": {"vr": "UI", "Value": [uid]}, "00080020": {"vr": "DA", "Value": [date]},
                                 "00080050": {"vr": "SH", "Value": [f"A{n:010d}"]},
                                 "00081030": {"vr": "LO", "Value": ["Biopsy" if n % 3 else "Resection"]},
                                 "00100010": {"vr": "PN", "Value": [{"Alphabetic": _name(n // STUDIES_PER_PATIENT)}]},
                                 "00100020": {"vr": "LO", "Value": [f"P{n // STUDIES_PER_PATIENT:09d}"]}})}


def _name(patient: int) -> str:
    return f"NAME{patient % NAMES:04d}^GIVEN{patient % 97}"


def rows(instances: int):
    """(table, columns, row iterator) for every table, the same for both backends."""
    series_n = instances // PER_SERIES
    studies = series_n // SERIES_PER_STUDY
    patients = (studies + STUDIES_PER_PATIENT - 1) // STUDIES_PER_PATIENT
    header = zlib.compress(b'{"00080016":{"vr":"UI","Value":["' + WSI.encode() + b'"]}}')
    yield "collection", ("name",), iter([("default",)])
    yield ("patient", ("pk", "patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex"),
           ((p + 1, f"P{p:09d}", "", _name(p), f"19{40 + p % 60}0101", "MF"[p % 2]) for p in range(patients)))

    def study_rows():
        for n in range(studies):
            s = _study(n)
            yield (n + 1, s["uid"], n // STUDIES_PER_PATIENT + 1, "default", s["date"], s["time"], s["accession"],
                   s["study_id"], "REF^DOCTOR", s["description"], s["attrs"], SERIES_PER_STUDY,
                   SERIES_PER_STUDY * PER_SERIES, "SM")
    yield ("study", ("pk", "study_instance_uid", "patient_fk", "collection", "study_date", "study_time",
                     "accession_number", "study_id", "referring_physician_name", "study_description", "attrs",
                     "series_count", "instance_count", "modalities"),
           study_rows())
    yield "study_collection", ("study_fk", "collection"), ((n + 1, "default") for n in range(studies))
    yield ("series", ("pk", "series_instance_uid", "study_fk", "modality", "series_number", "attrs", "instance_count"),
           ((k + 1, f"{ROOT}.{k // SERIES_PER_STUDY}.{k % SERIES_PER_STUDY + 1}", k // SERIES_PER_STUDY + 1, "SM",
             k % SERIES_PER_STUDY + 1, '{"00080060":{"vr":"CS","Value":["SM"]}}', PER_SERIES)
            for k in range(series_n)))
    now = time.time()
    yield ("instance", ("pk", "sop_instance_uid", "series_fk", "sop_class_uid", "instance_number", "image_type",
                        "number_of_frames", "rows", "columns", "transfer_syntax_uid", "storage_id", "size", "sha256",
                        "attrs", "header", "created"),
           ((i + 1, f"{ROOT}.{i // PER_SERIES // SERIES_PER_STUDY}.{i // PER_SERIES % SERIES_PER_STUDY + 1}."
                    f"{i % PER_SERIES + 1}",
             i // PER_SERIES + 1, WSI, i % PER_SERIES + 1, "ORIGINAL\\PRIMARY\\VOLUME\\NONE", 4 ** (i % PER_SERIES),
             256, 256, "1.2.840.10008.1.2.4.50", f"{i:032x}", 1000 + i % 999_000, f"{i:064x}", "{}", header, now)
            for i in range(instances)))


def fill_sqlite(path: Path, instances: int) -> float:
    from archive.catalog import Catalog

    started = time.perf_counter()
    catalog = Catalog(path)
    with catalog.transaction() as db:
        for table, cols, it in rows(instances):
            db.executemany(f"INSERT INTO {table}({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", it)
    catalog.db.execute("ANALYZE")
    catalog.close()
    return time.perf_counter() - started


def fill_postgresql(url: str, instances: int) -> float:
    import psycopg

    from archive.catalog import Catalog

    started = time.perf_counter()
    Catalog(url).close()  # the schema
    with psycopg.connect(url) as conn:
        for table, cols, it in rows(instances):
            with conn.cursor().copy(f"COPY {table} ({','.join(cols)}) FROM STDIN") as copy:
                for row in it:
                    copy.write_row(row)
            if "pk" in cols:  # explicit keys: move the identity past them, as ingest would have
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), (SELECT max(pk) FROM {table}))")
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def _pg_size(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def queries(instances: int, rng: random.Random) -> dict[str, object]:
    """Query name -> a function giving fresh QIDO parameters each call (random values, so caches do not flatter)."""
    studies = instances // PER_SERIES // SERIES_PER_STUDY
    return {
        "StudyInstanceUID=<one>": lambda: [("StudyInstanceUID", _study(rng.randrange(studies))["uid"])],
        "PatientID=<one>": lambda: [("PatientID", f"P{rng.randrange(studies // STUDIES_PER_PATIENT):09d}")],
        "AccessionNumber=<one>": lambda: [("AccessionNumber", f"A{rng.randrange(studies):010d}")],
        "PatientName=NAMEnnnn*, limit=100": lambda: [("PatientName", f"NAME{rng.randrange(NAMES):04d}*"),
                                                     ("limit", "100")],
        "StudyDate=<one day>, limit=100": lambda: [("StudyDate", _date(rng.randrange(DAYS))), ("limit", "100")],
        "StudyDate=<30-day range>, limit=100": lambda: [("StudyDate", "{}-{}".format(
            *(_date(d) for d in (lambda d: (d, d + 29))(rng.randrange(DAYS - 30))))), ("limit", "100")],
        "first page, limit=100": lambda: [("limit", "100")],
        "deep page, limit=100&offset=<second half>": lambda: [
            ("limit", "100"), ("offset", str(100 * rng.randrange(studies // 200, studies // 100 - 1)))],
    }


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


def measure(catalogs: dict, instances: int, repeats: int, budget: float) -> dict:
    """p50/p95 per query and backend, and the p95 against the reference: the first page (limit=100,
    no key: it returns as many studies and searches nothing), timed right after each search on the
    same backend, so both see the same moment's load of the shared machine."""
    from archive.auth.access import SYSTEM
    from archive.catalog.query import parse_qido

    rng = random.Random(7)
    reference = parse_qido("study", [("limit", "100")])
    out = {}
    for name, make in queries(instances, rng).items():
        times: dict[str, list[float]] = {label: [] for label in catalogs}
        refs: dict[str, list[float]] = {label: [] for label in catalogs}
        started = time.perf_counter()
        for n in range(repeats + 5):
            if n >= 25 and time.perf_counter() - started > budget:
                break
            query = parse_qido("study", make())
            for label, catalog in catalogs.items():
                for q, into in ((query, times), (reference, refs)):
                    t = time.perf_counter()
                    found = catalog.search(q, principal=SYSTEM)
                    if n >= 5:  # the first few warm the caches
                        into[label].append((time.perf_counter() - t) * 1000)
                    assert found or "Name" in name or "one day" in name, f"{label}: {name} found nothing"
        out[name] = {label: {"n": len(v), "p50_ms": round(statistics.median(v), 2), "p95_ms": round(_p95(v), 2),
                             "reference_p95_ms": round(_p95(refs[label]), 2),
                             "vs_reference": round(_p95(v) / _p95(refs[label]), 2)} for label, v in times.items()}
    return out


def _prepare(cluster, work: Path, instances: int, backends: list[str]) -> dict:
    """Each backend's catalog of ``instances`` generated rows: filled now, or reused from an earlier
    run in the same ``--data`` directory (a marker file says its fill finished). Returns fill seconds
    (None when reused)."""
    import psycopg

    fill: dict = {}
    for backend in backends:
        marker = work / f"filled-{backend}-{instances}"
        if marker.exists():
            fill[backend] = None
            continue
        if backend == "sqlite":
            (work / f"catalog-{instances}.sqlite").unlink(missing_ok=True)
            fill[backend] = fill_sqlite(work / f"catalog-{instances}.sqlite", instances)
        else:
            with psycopg.connect(cluster.url(), autocommit=True) as db:  # a fill that was interrupted
                db.execute(f"DROP DATABASE IF EXISTS bench_{instances}")
            fill[backend] = fill_postgresql(cluster.create_database(f"bench_{instances}"), instances)
        marker.touch()
    return fill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=200, help="timed searches per query and backend")
    parser.add_argument("--budget", type=float, default=60, help="seconds per query (at least 20 repeats)")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (its path is printed)")
    parser.add_argument("--data", type=Path, help="keep the generated catalogs in this directory and reuse "
                                                  "them in the next run given it (the fill is skipped)")
    args = parser.parse_args()
    from pg_cluster import PgCluster

    from archive.catalog import Catalog

    work = args.data or Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = PgCluster(work / "pg" if args.data else None).init().start()
    report = {}
    try:
        for instances in args.instances:
            fill = _prepare(cluster, work, instances, args.backends)
            where = {"sqlite": work / f"catalog-{instances}.sqlite", "postgresql": cluster.url(f"bench_{instances}")}
            size = {"sqlite": lambda: where["sqlite"].stat().st_size / 1e9,
                    "postgresql": lambda: _pg_size(where["postgresql"]) / 1e9}
            catalogs, opened = {}, {}
            for backend in args.backends:  # opening applies the migrations a reused catalog lacks
                started = time.perf_counter()
                catalogs[backend] = Catalog(where[backend])
                opened[backend] = time.perf_counter() - started
            sizes = {b: size[b]() for b in args.backends}
            print(f"{instances:,} instances: " + ", ".join(
                f"{b} {'reused' if fill[b] is None else f'filled in {fill[b]:.0f} s'}, opened (migrations) in "
                f"{opened[b]:.1f} s, {sizes[b]:.2f} GB" for b in args.backends), flush=True)
            try:
                result = measure(catalogs, instances, args.repeats, args.budget)
            finally:
                for c in catalogs.values():
                    c.close()
            report[instances] = {"fill_s": {k: v if v is None else round(v) for k, v in fill.items()},
                                 "open_s": {k: round(v, 1) for k, v in opened.items()},
                                 "size_gb": {k: round(v, 2) for k, v in sizes.items()}, "queries": result}
            print(f"| study QIDO at {instances:,} instances | "
                  + " | ".join(f"{b} p50 | {b} p95 | {b} p95 vs first page" for b in args.backends) + " |\n|---|"
                  + "---|---|---|" * len(args.backends))
            for name, r in result.items():
                print(f"| {name} | " + " | ".join(f"{r[b]['p50_ms']} ms | {r[b]['p95_ms']} ms | "
                                                  f"{r[b]['vs_reference']:.2f}x of {r[b]['reference_p95_ms']} ms"
                                                  for b in args.backends) + " |", flush=True)
            for b in args.backends:
                worst = max(r[b]["p95_ms"] for r in result.values())
                print(f"{b} worst p95 at {instances:,}: {worst} ms (target < 50 ms at 10,000,000)", flush=True)
        print("RESULT " + json.dumps(report))
    finally:
        if args.data:
            cluster.stop()
            print(f"kept {work} (give --data {work} again to reuse it)")
        elif args.keep:
            cluster.stop()
            print(f"kept {cluster.root}\nkept {work}")
        else:
            cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
