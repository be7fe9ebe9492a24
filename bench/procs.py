"""Process plumbing shared by the benchmarks: free ports, servers in their own
process group, and memory sampling of a whole process tree.

Every server a benchmark starts runs in a new session (its own process group),
so that stopping it also stops whatever workers it forked, and nothing outlives
the benchmark even when it fails half-way.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PSS_EVERY = 5


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the finally blocks that stop the
    servers also run when the benchmark itself is killed (timeout, CI)."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    """A loopback port that was free a moment ago (good enough for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(cmd: list[str], log: Path, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start cmd as the leader of a new process group, output appended to log."""
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, start_new_session=True)
    finally:
        out.close()


def stop_group(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the process group of proc, then SIGKILL it if it does not go."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no forked worker of it survives.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    proc.wait()


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Poll url until the server answers anything below 500; seconds waited.

    Raises RuntimeError if the server process exits or the time runs out.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return time.monotonic() - t0
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return time.monotonic() - t0
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def wait_tcp(port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:port."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def process_tree(root: int) -> list[int]:
    """root and all its descendants, as seen now."""
    kids = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


def rss_kb(pid: int) -> int:
    """Resident set size of one process in kB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss_kb(root: int) -> int:
    return sum(rss_kb(p) for p in process_tree(root))


def rollup_kb(pid: int, field: str = "Pss") -> int:
    """One field of ``/proc/<pid>/smaps_rollup`` in kB (0 if it is gone).

    ``Pss`` splits each page among the processes that map it: summed over a tree of forked
    processes it counts a shared page once, where summed RSS counts it in every process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_pss_kb(root: int) -> int:
    return sum(rollup_kb(p) for p in process_tree(root))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, including children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2:].split()
    # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17).
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU used so far by a process tree: what the server spent, whatever else
    runs on the machine at the same time (unlike wall-clock rates)."""
    return sum(cpu_seconds(p) for p in process_tree(root))


@dataclass
class MemorySampler:
    """Samples the summed RSS of a process tree in a thread, keeping the peak.

    RSS summed over the tree is what the machine has to provide; a sampled peak
    can miss a spike shorter than the interval, so the interval is short, and the
    tree is re-read every few samples to see workers that come and go.
    """

    root: int
    interval: float = 0.02
    peak_kb: int = 0
    start_kb: int = 0
    start_pss_kb: int = 0
    peak_pss_kb: int = 0  # sampled every PSS_EVERY samples (reading smaps_rollup costs more)
    samples: int = 0
    cpu_s: float = 0.0  # CPU the tree used between enter and exit
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "MemorySampler":
        self.start_kb = tree_rss_kb(self.root)
        self.peak_kb = self.start_kb
        self.start_pss_kb = self.peak_pss_kb = tree_pss_kb(self.root)
        self.cpu_s = -tree_cpu_seconds(self.root)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = process_tree(self.root)
        while not self._stop.is_set():
            if self.samples % 10 == 0:
                pids = process_tree(self.root)
            self.peak_kb = max(self.peak_kb, sum(rss_kb(p) for p in pids))
            if self.samples % PSS_EVERY == 0:
                self.peak_pss_kb = max(self.peak_pss_kb, sum(rollup_kb(p) for p in pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_kb = max(self.peak_kb, tree_rss_kb(self.root))
        self.peak_pss_kb = max(self.peak_pss_kb, tree_pss_kb(self.root))
        self.cpu_s += tree_cpu_seconds(self.root)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024
