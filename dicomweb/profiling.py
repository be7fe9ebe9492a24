"""Where an HTTP worker's CPU goes, for benchmarks only (``SLIDEARCHIVE_PROFILE=<dir>``).

py-spy cannot see the Python frames of granian's blocking threads (Rust threads that
take the GIL), so the worker accounts for itself. With ``SLIDEARCHIVE_PROFILE`` set, each
request (the app call, the iteration of its body and its close) adds its thread CPU time
to a total, and so does each ``Archive.store_file`` inside it: the request's CPU outside
the ingest is the difference, and the process CPU that no request accounts for (granian's
Rust side, the audit writer and the other threads) is what is left of the process's.
``SLIDEARCHIVE_PROFILE_FUNCTIONS=1`` also runs every request under a per-thread
``cProfile`` (which slows Python code about 1.5x: use the CPU totals from a run without it).
Every ``DUMP_EVERY`` requests the worker writes ``<dir>/worker-<pid>.txt`` (the totals)
and, with functions, ``<dir>/worker-<pid>.prof`` (pstats, all threads merged).
Never set in production. See bench/FINDINGS.md (STOW-RS of small instances).
"""
from __future__ import annotations

import cProfile
import functools
import os
import pstats
import resource
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ENV = "SLIDEARCHIVE_PROFILE"
FUNCTIONS_ENV = "SLIDEARCHIVE_PROFILE_FUNCTIONS"
DUMP_EVERY = 50


class Profiled:
    """WSGI middleware: the wrapped app's requests, accounted for (see the module docstring)."""

    def __init__(self, app: Callable, directory: Path, functions: bool):
        self.app = app
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.functions = functions
        self.local = threading.local()
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()
        self.requests = 0
        self.totals = {"request": 0.0, "store_file": 0.0}
        self.threads: dict[int, float] = {}  # native thread id -> CPU seconds in requests
        self.started = _process_cpu()

    def timed(self, name: str, function: Callable) -> Callable:
        """``function``, its thread CPU time added to the total ``name``."""
        return thread_timed(function, lambda seconds: self._add(name, seconds))

    def _add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.totals[name] = self.totals.get(name, 0.0) + seconds
            if name == "request":
                tid = threading.get_native_id()
                self.threads[tid] = self.threads.get(tid, 0.0) + seconds

    def _run(self, call: Callable) -> Any:
        profile = self._profile() if self.functions else None
        cpu = time.thread_time()
        if profile is not None:
            profile.enable()
        try:
            return call()
        finally:
            if profile is not None:
                profile.disable()
            self._add("request", time.thread_time() - cpu)

    def _profile(self) -> cProfile.Profile:
        profile = getattr(self.local, "profile", None)
        if profile is None:
            profile = self.local.profile = cProfile.Profile()
            with self.lock:
                self.profiles.append(profile)
        return profile

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = self._run(lambda: self.app(environ, start_response))
        return _ProfiledBody(self, body)

    def finished(self) -> None:
        with self.lock:
            self.requests += 1
            if self.requests % DUMP_EVERY == 0:
                self._dump()

    def _dump(self) -> None:
        stem = self.directory / f"worker-{os.getpid()}"
        stats = None
        for profile in self.profiles:
            profile.create_stats()  # a snapshot; it goes on collecting
            stats = pstats.Stats(profile) if stats is None else stats.add(profile)
        if stats is not None:
            stats.dump_stats(str(stem) + ".prof")
        lines = [f"requests {self.requests}", f"process_cpu_s {_process_cpu() - self.started:.4f}"]
        lines += [f"{name}_cpu_s {seconds:.4f}" for name, seconds in self.totals.items()]
        lines += [f"thread {tid} request_cpu_s {seconds:.4f}" for tid, seconds in sorted(self.threads.items())]
        partial = stem.with_suffix(".txt.part")  # renamed whole: a reader never sees half a file
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(stem.with_suffix(".txt"))


class _ProfiledBody:
    def __init__(self, owner: Profiled, body: Iterable[bytes]):
        self.owner = owner
        self.body = body

    def __iter__(self):
        chunks = self.owner._run(lambda: iter(self.body))
        while (chunk := self.owner._run(lambda: next(chunks, None))) is not None:
            yield chunk  # one chunk at a time: a streamed body stays streamed

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        try:
            if close is not None:
                self.owner._run(close)
        finally:
            self.owner.finished()


def thread_timed(function: Callable, add: Callable[[float], None]) -> Callable:
    """``function``, each call's thread CPU seconds passed to ``add`` (also bench/store_small.py's)."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        cpu = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            add(time.thread_time() - cpu)
    return call


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wrap(app: Callable, archive: Any) -> Callable:
    """``app`` accounted for when ``SLIDEARCHIVE_PROFILE`` names a directory, else ``app`` itself."""
    directory = os.environ.get(ENV)
    if not directory:
        return app
    profiled = Profiled(app, Path(directory), os.environ.get(FUNCTIONS_ENV) == "1")
    archive.store_file = profiled.timed("store_file", archive.store_file)
    return profiled
