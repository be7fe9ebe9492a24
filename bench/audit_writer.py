"""Audit writer CPU per record at C-STORE pace: one DICOM Instances Transferred record every
``--gap`` seconds (a storescu peer's pace), written with ``fsync`` on as configured by default.

    python bench/audit_writer.py [--gap 0.02] [--records 300]

Prints the writer thread's CPU (``/proc/self/task/<tid>/stat``) per record; the writer's cost
is mostly one ``write`` and ``fdatasync`` per batch, so it falls as records share a batch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archive.audit.trail import AuditTrail  # noqa: E402
from archive.config import AuditSettings  # noqa: E402
from archive.dimse.audit import AEPeer  # noqa: E402


def thread_cpu_ms(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gap", type=float, default=0.02, help="seconds between records")
    p.add_argument("--records", type=int, default=300)
    a = p.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-audit-", dir="/tmp"))
    try:
        trail = AuditTrail(AuditSettings(), directory, "BENCH")
        trail.record("ApplicationActivity", principal=None)
        trail.flush()
        tid = trail._thread.native_id
        before = thread_cpu_ms(tid)
        peer = AEPeer("BENCH")
        for i in range(a.records):
            trail.record("DICOMInstancesTransferred", principal=peer, remote="127.0.0.1", study="1.2.3.4",
                         series="1.2.3.4.5", instances=[("1.2.840.10008.5.1.4.1.1.77.1.6", f"1.2.3.4.5.{i}")],
                         detail={"action": "C"})
            time.sleep(a.gap)
        trail.flush()
        print(f"audit writer: {(thread_cpu_ms(tid) - before) / a.records:.3f} ms CPU per record "
              f"({a.records} records, one every {a.gap} s, {trail.written} lines written)")
        trail.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
