"""The single-frame fast path's CPU per request in one process, without sockets or granian.

    PYTHONPATH=<tree> python bench/frame_path.py SLIDE_DIR [--requests 20000] [--profile]

Builds a fresh archive in a temporary directory (authentication off, access log to a file,
metrics in a multiprocess directory, as an HTTP worker of ``serve`` has them), stores the
slide's levels, then calls the worker's WSGI stack (AccessLog around the app with its
FastFrames) with random single frames of the largest level, as wrk's frames.lua asks for
them. Prints the thread CPU per request; ``--profile`` also the cProfile function calls per
request (deterministic, unlike times on a shared machine) and the top functions. The code
measured is whatever ``archive`` and ``dicomweb`` import from: run it twice with PYTHONPATH
naming two checkouts, in the same minutes, for a before/after. See bench/FINDINGS.md.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide_dir", type=Path)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--profile", action="store_true", help="cProfile: calls per request and the top functions (one thread only)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads calling the app at once (as granian's blocking threads do), measuring the process CPU "
                        "per request (the writer threads' too); 0: the calling thread's CPU alone")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-frame-path-", dir="/tmp"))
    try:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")  # before prometheus_client is imported
        (work / "metrics").mkdir()
        run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(a: argparse.Namespace, work: Path) -> None:
    from archive.config import load_settings
    from archive.ingest import Origin
    from archive.logs import AccessLog, configure
    from dicomweb import create_app

    config = work / "slidearchive.toml"
    config.write_text('[auth]\nenabled = false\n[logging]\nfile = "log/server.log"\n')
    settings = load_settings(config, data_dir=str(work / "data"))
    configure(settings.logging, settings.data_dir, access=True)
    app = create_app(settings)
    archive = app.extensions["archive"]
    for level in sorted(a.slide_dir.glob("level*.dcm")):
        archive.store_file(level, Origin("import"))
    study, series, sop, frames = archive.catalog.db.execute(
        "SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.number_of_frames "
        "FROM instance i JOIN series se ON i.series_fk=se.pk JOIN study st ON se.study_fk=st.pk "
        "ORDER BY i.number_of_frames DESC").fetchone()
    wsgi = AccessLog(app.wsgi_app)
    prefix = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/"
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info=None) -> None:
        statuses.append(status)

    def request(n: int) -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": prefix + str(n), "QUERY_STRING": "",
                   "HTTP_ACCEPT": FRAME_ACCEPT, "REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8080", "HTTP_HOST": "localhost:8080", "wsgi.url_scheme": "http"}
        wsgi(environ, start_response)

    rng = random.Random(1)
    numbers = [rng.randint(1, frames) for _ in range(a.requests)]
    for n in numbers[:500]:  # warm: frame index, descriptors, statement cache, metric children
        request(n)
    statuses.clear()
    if a.threads:
        cpu = _threaded(request, numbers, a.threads)
    else:
        profile = cProfile.Profile() if a.profile else None
        cpu = time.thread_time()
        if profile is not None:
            profile.enable()
        for n in numbers:
            request(n)
        if profile is not None:
            profile.disable()
        cpu = time.thread_time() - cpu
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        sys.exit(f"{len(bad)} requests not answered 200, e.g. {bad[0]}")
    import archive as measured

    clock = "thread" if not a.threads else f"process ({a.threads} threads)"
    print(f"{cpu / len(numbers) * 1e6:.1f} us {clock} CPU per request ({len(numbers)} random frames of a "
          f"{frames}-frame level, code from {Path(measured.__file__).parent.parent})")
    if a.profile and not a.threads:
        stats = pstats.Stats(profile)
        print(f"{stats.total_calls / len(numbers):.1f} function calls per request (cProfile)")
        stats.sort_stats("tottime").print_stats(25)


def _threaded(request: Callable[[int], None], numbers: list[int], threads: int) -> float:
    """Process CPU seconds of ``threads`` threads sharing ``numbers`` between them, all at once."""
    start = threading.Barrier(threads + 1)

    def body(share: list[int]) -> None:
        start.wait()
        for n in share:
            request(n)

    workers = [threading.Thread(target=body, args=(numbers[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    cpu = time.process_time()
    for w in workers:
        w.join()
    return time.process_time() - cpu


if __name__ == "__main__":
    main()
