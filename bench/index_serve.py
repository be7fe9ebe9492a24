"""The index worker's CPU per instance in a running ``serve`` while storescu C-STOREs small
instances on one association (issue 9 item 4): the CPU of the background process's
``index-worker`` thread (found by ``py-spy dump``; /proc/<pid>/task/<tid>/stat before and after)
and of the whole background process, per instance. Run it from each checkout to compare:

    python bench/index_serve.py [--small 300] [--repeat 2]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

import dataset
import procs
import servers


def _thread_ticks(pid: int) -> dict[int, int]:
    """utime + stime (clock ticks) of each thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_bytes().rsplit(b")", 1)[1].split()
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


def _index_worker(root: int) -> tuple[int, int]:
    """(pid, tid) of the thread named index-worker in the server's process tree."""
    for pid in procs.process_tree(root):
        dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
        found = re.search(r'Thread (\d+) \([^)]*\): "index-worker"', dump)
        if found:
            return pid, int(found.group(1))
    raise RuntimeError("no index-worker thread in the server's processes")


def measure(files: Path, count: int, workdir: Path) -> tuple[float, float]:
    """(index worker ms, background process ms) per instance for one fresh server."""
    with servers.SlideArchive(workdir) as server:
        if not procs.wait_tcp(server.dimse_port, 60):
            raise RuntimeError("nothing listens on the DIMSE port")
        time.sleep(2.0)  # the worker's first steps after start
        pid, tid = _index_worker(server.pid)
        before = _thread_ticks(pid)
        subprocess.run(["/usr/bin/storescu", "-aec", server.aet, "+sd", "-R", "127.0.0.1", str(server.dimse_port),
                        str(files)], check=True, capture_output=True)
        time.sleep(4.0)  # the worker's last step (poll interval 1 s)
        after = _thread_ticks(pid)
    per = 1000 / procs.CLOCK_TICKS / count
    return ((after.get(tid, 0) - before.get(tid, 0)) * per,
            sum(ticks - before.get(t, 0) for t, ticks in after.items()) * per)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=300, help="small instances to send")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="index-serve-") as tmp:
        files = Path(tmp) / "small"
        dataset.make_small_instances(files, args.small)
        for n in range(args.repeat):
            worker, background = measure(files, args.small, Path(tmp) / f"server-{n}")
            print(f"run {n + 1}: index worker {worker:.3f} ms/instance, background process {background:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
