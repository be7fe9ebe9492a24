"""Small-instance ingest alone: C-STORE (storescu, one association) and STOW-RS (one
request per instance, one connection) of N copies of the 17 KB SM image, each on a
fresh server, for slidearchive and Orthanc in the same run (issue 9 item 4).

The same measurements as bench/ingest.py's cstore-small / stow-small without the
slide ingests, so the per-instance cost can be re-measured in a minute:

    python bench/small_ingest.py [--small 200] [--servers slidearchive,Orthanc] [--repeat 1] [--idle 5]

``--idle S`` also measures the server CPU per second while one DIMSE association stays
open and silent for S seconds (pynetdicom's reactors poll; DCMTK's wait).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import dataset
import ingest
import procs


def idle_cpu(server, seconds: float) -> float:
    """Server CPU (ms per second) while one Verification association stays open and silent."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    if not procs.wait_tcp(server.dimse_port, 60):
        raise RuntimeError(f"{server.name}: nothing listens on DIMSE port {server.dimse_port}")
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.aet)
    if not assoc.is_established:
        raise RuntimeError(f"{server.name}: association refused")
    try:
        time.sleep(1.0)
        before = procs.tree_cpu_seconds(server.pid)
        time.sleep(seconds)
        return (procs.tree_cpu_seconds(server.pid) - before) * 1000 / seconds
    finally:
        assoc.release()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=200, help="small instances to send")
    p.add_argument("--servers", default="slidearchive,Orthanc")
    p.add_argument("--repeat", type=int, default=1, help="runs of each measurement")
    p.add_argument("--idle", type=float, default=0.0, help="seconds of one idle association to measure")
    a = p.parse_args()
    procs.exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-small-", dir="/tmp"))
    try:
        small = dataset.make_small_instances(work / "small", a.small)
        plan = [("cstore-small", lambda s: ingest.storescu(s, small[0].parent, [])),
                ("stow-small", lambda s: ingest.stow_each(s, small))]
        results = []
        for run in range(a.repeat):
            for name in a.servers.split(","):
                for label, send in plan:
                    server = ingest.make_server(name, work / f"{name}-{label}-{run}")
                    print(f"  {name}: {label} ({len(small)} files) ...", flush=True)
                    results.append(ingest.measure_fresh(server, label, small,
                                                        lambda s=server, f=send: f(s)))
        idle = {}
        for name in a.servers.split(",") if a.idle > 0 else ():
            server = ingest.make_server(name, work / f"{name}-idle")
            server.start()
            try:
                idle[name] = idle_cpu(server, min(a.idle, 60.0))
            finally:
                server.wipe()
        for r in results:
            print(f"{r.server:12} {r.label:13} {r.instances_per_s:8.1f} inst/s "
                  f"{r.cpu_ms_per_instance or 0:7.2f} ms CPU/inst  load {r.load:4.1f}  "
                  f"{'ok' if r.ok else 'FAILED ' + r.detail}")
        for name, ms in idle.items():
            print(f"{name:12} idle association {ms:7.1f} ms CPU per s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
