"""What access control costs: frames with authentication on vs off, and QIDO filtered to 1 of 100 collections.

1. Frames: the same data served by two servers at once, one with ``[auth] enabled = false``,
   one with authentication on (every request carries an API key, verified once, then
   cached); wrk with 8 connections asks for random single frames (the fast path), runs
   alternating between the two. Reports the medians of frames/s, p99 and server CPU per
   frame (the steadiest of the three on a shared machine), and the ratios (target >= 0.9).
2. QIDO: a catalog of ``--studies`` studies spread over 100 collections (rows written in
   one transaction, as ingest would have left them); study-level searches timed in process
   (the SQL is what changes) for an administrator (unfiltered) and for a principal holding
   one collection. Reports p95 of each and the ratio (target: filtered <= 1.2x unfiltered).

    python bench/auth_bench.py [--seconds 8] [--rounds 3] [--studies 100000] [--skip-frames] [--skip-qido]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
LUA = HERE / "frames.lua"
ACCEPT = "application/octet-stream; transfer-syntax=*"
CONNECTIONS, THREADS = 8, 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, config: str, work: Path) -> tuple[subprocess.Popen, int]:
    path = work / f"config-{time.time_ns()}.toml"
    path.write_text(config)
    port = _free_port()
    log = open(work / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "archive.cli", "serve", "--data-dir", str(data_dir),
                             "--config", str(path), "--http-port", str(port), "--no-dimse", "--workers", "2"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(30)


def _wrk(port: int, prefix: str, count: int, seconds: int, token: str) -> dict:
    paths = Path(tempfile.mkstemp(suffix=".txt")[1])
    paths.write_text(f"{prefix}\n{count}\n")
    done = subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds}s", "-s", str(LUA),
                           f"http://127.0.0.1:{port}", "--", str(paths), ACCEPT, "0", token or "-"],
                          capture_output=True, text=True, timeout=seconds + 60)
    paths.unlink()
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            errors = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "not_200"))
            return {"requests": r["requests"], "rps": r["requests"] / (r["duration_us"] / 1e6),
                    "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "errors": errors}
    raise RuntimeError(f"wrk printed no result: {done.stdout[-400:]} {done.stderr[-400:]}")


def _group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process in the server's process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def bench_frames(seconds: int, rounds: int, work: Path) -> dict:
    """Both servers up at once over the same data; rounds alternate off, on, off, on ... (same machine load)."""
    from slides import SlideSpec, make_slide

    slide = make_slide(work / "slide", SlideSpec(width=4096, height=4096, seed=7, label=False, overview=False))
    data = work / "data"
    off = "[auth]\nenabled = false\n[deid]\ndefault = 'keep'\n[deid.policies.keep]\nidentified = true\n"
    servers = {"off": _serve(data, off, work)}
    try:
        port = servers["off"][1]
        boundary = "b"
        body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + slide[0].read_bytes() \
            + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/dicomweb/studies", data=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        url = json.loads(urllib.request.urlopen(req).read())["00081199"]["Value"][0]["00081190"]["Value"][0]
        from pydicom import dcmread

        count = int(dcmread(slide[0], stop_before_pixels=True).NumberOfFrames)
        prefix = "/" + url.split("127.0.0.1:")[1].split("/", 1)[1] + "/frames/"
        key = subprocess.run([sys.executable, "-m", "archive.cli", "keys", "create", "--name", "bench", "--grant",
                              "default", "--data-dir", str(data)], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        servers["on"] = _serve(data, off.replace("enabled = false", "enabled = true"), work)
        tokens = {"off": "", "on": key}
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for label in ("off", "on"):
            _wrk(servers[label][1], prefix, count, 2, tokens[label])  # warm caches
        for _ in range(rounds):
            for label in ("off", "on"):
                proc, port = servers[label]
                cpu = _group_cpu_s(proc.pid)
                r = _wrk(port, prefix, count, seconds, tokens[label])
                r["cpu_ms_per_frame"] = (_group_cpu_s(proc.pid) - cpu) * 1000 / max(r["requests"], 1)
                if r["errors"]:
                    raise RuntimeError(f"errors during the run: {r}")
                runs[label].append(r)
    finally:
        for proc, _ in servers.values():
            _stop(proc)
    out: dict = {"frames": count, "rounds": rounds}
    for label, rs in runs.items():
        out[label] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_frame")}
    return out


def fill_catalog(path: Path, studies: int, collections: int = 100, layout: str = "random") -> None:
    """Rows as ingest writes them (one series and instance per study), in one transaction.

    ``layout``: "random" gives each study a random collection (the worst case: a collection's
    studies are spread one per page); "batched" lets studies arrive in runs of 100 per
    collection, as a cohort upload does."""
    from archive.catalog import Catalog

    catalog = Catalog(path)
    rng = random.Random(1)
    with catalog.transaction() as db:
        db.executemany("INSERT INTO collection(name) VALUES (?)", [(f"c{n:03d}",) for n in range(collections)])
        db.executemany("INSERT INTO patient(pk, patient_id, issuer_of_patient_id, patient_name) VALUES (?,?,?,?)",
                       [(n, f"P{n:07d}", "", f"NAME{n % 977}^GIVEN{n % 13}") for n in range(studies)])
        study_rows, series_rows, instance_rows, member_rows = [], [], [], []
        for n in range(studies):
            uid = f"2.25.{10**20 + n}"
            collection = f"c{(rng.randrange(collections) if layout == 'random' else n // 100 % collections):03d}"
            attrs = json.dumps({"0020000D": {"vr": "UI", "Value": [uid]},
                                "00100020": {"vr": "LO", "Value": [f"P{n:07d}"]},
                                "00080020": {"vr": "DA", "Value": [f"20{10 + n % 15}0101"]}})
            study_rows.append((n, uid, n, collection, f"20{10 + n % 15}0101", attrs))
            member_rows.append((n, collection))
            series_rows.append((n, f"{uid}.1", n, "SM", "{}"))
            instance_rows.append((n, f"{uid}.1.1", n, "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.840.10008.1.2.4.50",
                                  f"s{n}", 1, "0" * 64, "{}", b"x", time.time()))
        db.executemany("INSERT INTO study(pk, study_instance_uid, patient_fk, collection, study_date, attrs) "
                       "VALUES (?,?,?,?,?,?)", study_rows)
        db.executemany("INSERT INTO study_collection(study_fk, collection) VALUES (?,?)", member_rows)
        db.executemany("INSERT INTO series(pk, series_instance_uid, study_fk, modality, attrs) VALUES (?,?,?,?,?)",
                       series_rows)
        db.executemany("INSERT INTO instance(pk, sop_instance_uid, series_fk, sop_class_uid, transfer_syntax_uid, "
                       "storage_id, size, sha256, attrs, header, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       instance_rows)
    catalog._db().execute("ANALYZE")
    catalog.close()


QUERIES = {
    "first page (limit=100)": [("limit", "100")],
    "page 5 (limit=100&offset=400)": [("limit", "100"), ("offset", "400")],
    "StudyDate range, limit=100": [("StudyDate", "20150101-20201231"), ("limit", "100")],
    "PatientName=NAME1*, limit=100": [("PatientName", "NAME1*"), ("limit", "100")],
}


def bench_qido(studies: int, work: Path, layout: str, repeats: int = 200, budget_s: float = 30) -> dict:
    from archive.auth.access import SYSTEM, Principal
    from archive.catalog import Catalog
    from archive.catalog.query import parse_qido

    path = work / f"qido-{layout}.sqlite"
    started = time.perf_counter()
    fill_catalog(path, studies, layout=layout)
    filled = time.perf_counter() - started
    catalog = Catalog(path)
    one = Principal("bench", "apikey", {"c042": frozenset({"read"})})
    out = {"studies": studies, "layout": layout, "fill_s": round(filled, 1), "queries": {}}
    for name, params in QUERIES.items():
        query = parse_qido("study", params)
        times = {"unfiltered": [], "1 of 100": []}
        started = time.perf_counter()
        for n in range(repeats):  # interleaved, so both see the same machine load; bounded in time
            if n >= 20 and time.perf_counter() - started > budget_s:
                break
            for label, who in (("unfiltered", SYSTEM), ("1 of 100", one)):
                t = time.perf_counter()
                rows = catalog.search(query, principal=who)
                times[label].append((time.perf_counter() - t) * 1000)
                assert rows or label == "1 of 100"
        p95 = {k: statistics.quantiles(v, n=20)[18] for k, v in times.items()}
        p50 = {k: statistics.median(v) for k, v in times.items()}
        out["queries"][name] = {"p95_ms_unfiltered": round(p95["unfiltered"], 2),
                                "p95_ms_1_of_100": round(p95["1 of 100"], 2),
                                "ratio": round(p95["1 of 100"] / p95["unfiltered"], 2),
                                "p50_ratio": round(p50["1 of 100"] / p50["unfiltered"], 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per frames run")
    parser.add_argument("--rounds", type=int, default=3, help="frames runs per setting, alternating")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--skip-frames", action="store_true")
    parser.add_argument("--skip-qido", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    try:
        report: dict = {}
        if not args.skip_frames:
            f = bench_frames(args.seconds, args.rounds, work)
            report["frames"] = f
            print(f"frames ({f['frames']}-frame level, {CONNECTIONS} connections, median of {f['rounds']} "
                  f"alternating runs of {args.seconds} s):")
            for label in ("off", "on"):
                r = f[label]
                print(f"  auth {label:3}: {r['rps']:9.1f} frames/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                      f"server CPU {r['cpu_ms_per_frame']:.3f} ms/frame")
            print(f"  ratio on/off: frames/s {f['on']['rps'] / f['off']['rps']:.2f}x, "
                  f"p99 {f['on']['p99_ms'] / f['off']['p99_ms']:.2f}x, "
                  f"CPU per frame {f['on']['cpu_ms_per_frame'] / f['off']['cpu_ms_per_frame']:.2f}x")
        if not args.skip_qido:
            for layout in ("random", "batched"):
                q = bench_qido(args.studies, work, layout)
                report[f"qido_{layout}"] = q
                print(f"QIDO at {q['studies']} studies in 100 collections, {layout} (filled in {q['fill_s']} s):")
                for name, r in q["queries"].items():
                    print(f"  {name:32} p95 unfiltered {r['p95_ms_unfiltered']:7.2f} ms, 1 of 100 collections "
                          f"{r['p95_ms_1_of_100']:7.2f} ms, ratio {r['ratio']:.2f}x (p50 {r['p50_ratio']:.2f}x)")
        print("RESULT " + json.dumps(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
