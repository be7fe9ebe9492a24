"""Every command in README.md and docs/*.md runs, as written, against a real local server.

What runs: fenced ```sh and ```bash blocks. ```text blocks (and every other language) are
illustrative and do not run. Inside a block, a line ending in ``\\`` continues on the next;
comment-only lines are skipped; every other line is one command for ``bash -e -o pipefail``
and must exit 0 (the docs use ``curl -f`` so that an HTTP error is a failure).

What is substituted, and nothing else:

- Each document runs in its own scratch directory (the working directory of its commands),
  with ``scripts/`` linked from this checkout, and a PATH whose first entries are a
  ``slidearchive`` and a ``python3`` that run this checkout, then /usr/bin (the docs'
  ``storescu`` is DCMTK's, not pynetdicom's app of the same name).
- Ports: 8080 and 11112 become free ports.
- Example host paths become paths in the scratch directory (``PLACES``): a data directory,
  a configuration file (a ``research`` policy with ``relink = true`` and the broker key the
  docs' ``broker keygen`` makes), a scanner export folder and a slide folder (each a
  generated slide, plus a README.md the import must skip).
- Shell variables the docs use for values only a running archive knows are set before each
  command, from the archive the most recently started server keeps: ``SLIDEARCHIVE_KEY``
  (the administrator key its first start printed), ``STUDY``, ``SERIES``, ``INSTANCE`` (a
  slide's level it holds) and ``PSEUDONYM`` (that slide's patient pseudonym).
- A command that starts a server (``slidearchive serve``, ``scripts/start.sh``) runs in the
  background (given ``--http-port`` / ``--dimse-port`` with the free ports when it leaves
  them to the embedded defaults) until it answers ``/health`` and listens for DIMSE; it stays up until the next
  such command or the end of the document, then gets SIGTERM and must exit 0 (the README's
  way to stop it). A document whose commands start no server gets ``slidearchive serve`` on
  the embedded defaults first.
- ``scripts/test.sh`` gets a pytest selection appended: the whole suite inside the suite
  would never end. Its install steps run as written.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, free_port
from slides import SlideSpec, make_slide

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_FENCES = ("sh", "bash")
TEST_SH_SELECTION = "tests/test_cli.py::test_help"
SERVER_COMMAND = re.compile(r"(^|\s)(slidearchive serve|bash scripts/start\.sh|scripts/start\.sh)(\s|$)")
VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: The documented bound of a stop ([server] stop_timeout, 30 s by default, + 10 s: archive/server.py), and a margin.
STOP_TIMEOUT = 45


def commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command in the document's sh / bash blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip().split() or [""])[0]
            continue
        if fence not in RUN_FENCES:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        command = (pending + stripped).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append((start, command))
    return out


def documents_with_commands() -> list[Path]:
    return [d for d in DOCUMENTS if commands(d.read_text())]


def test_the_extractor_reads_only_sh_and_bash_blocks():
    text = "```sh\nslidearchive verify \\\n  --checksums  # why\n# just a comment\n```\n" \
           "```text\nslidearchive serve --host pacs.example.org\n```\n```bash\necho hi\n```\n"
    assert commands(text) == [(2, "slidearchive verify --checksums  # why"), (10, "echo hi")]
    assert REPO / "README.md" in documents_with_commands()


@dataclass
class Scratch:
    """The scratch directory a document's commands run in, and what stands in for the docs' examples."""

    root: Path
    http_port: int = field(default_factory=free_port)
    dimse_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        (self.root / "scripts").symlink_to(REPO / "scripts")
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "slidearchive"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m archive.cli "$@"\n')
        shim.chmod(0o755)
        (bin_dir / "python3").symlink_to(sys.executable)
        for place in ("srv", "etc", "mnt"):
            (self.root / place).mkdir()
        make_slide(self.root / "mnt" / "scanner-export", SlideSpec(width=512, height=512, seed=91))
        (self.root / "mnt" / "scanner-export" / "README.md").write_text("# what the scanner exported\n")
        make_slide(self.root / "slide-folder", SlideSpec(width=768, height=512, seed=92))
        (self.root / "etc" / "slidearchive.toml").write_text(
            '[deid]\ndefault = "research"\n[deid.policies.research]\nrelink = true\n'
            f'broker_public_key = "{self.root / "broker-keys" / "broker_public.pem"}"\n')

    @property
    def places(self) -> dict[str, str]:
        """Example paths of the docs -> the scratch paths standing in for them (longest first)."""
        return {"/etc/slidearchive.toml": str(self.root / "etc" / "slidearchive.toml"),
                "/srv/slides": str(self.root / "srv" / "slides"),
                "/mnt/scanner-export": str(self.root / "mnt" / "scanner-export"),
                "~/broker-keys": str(self.root / "broker-keys")}

    def substitute(self, command: str) -> str:
        for example, local in self.places.items():
            command = command.replace(example, local)
        command = re.sub(r"\b8080\b", str(self.http_port), command)
        command = re.sub(r"\b11112\b", str(self.dimse_port), command)
        if re.search(r"(^|\s)(bash )?scripts/test\.sh(\s|$)", command):
            command = re.sub(r"(scripts/test\.sh)", rf"\1 -q {TEST_SH_SELECTION}", command, count=1)
        return command

    def environment(self, data_dir: Path, key: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(PATH=f"{self.root / 'bin'}:/usr/bin:{os.environ['PATH']}", PYTHONPATH=str(REPO),
                   SLIDEARCHIVE_KEY=key, **held(data_dir))
        return env


def held(data_dir: Path) -> dict[str, str]:
    """STUDY, SERIES, INSTANCE of a slide level the archive at ``data_dir`` holds, and its PSEUDONYM."""
    empty = {"STUDY": "", "SERIES": "", "INSTANCE": "", "PSEUDONYM": ""}
    catalog = data_dir / "catalog.sqlite"
    if not catalog.is_file():
        return empty
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, p.patient_id "
            "FROM instance i JOIN series se ON i.series_fk = se.pk JOIN study st ON se.study_fk = st.pk "
            "JOIN patient p ON st.patient_fk = p.pk WHERE i.sop_class_uid = ? AND i.image_type LIKE '%VOLUME%' "
            "ORDER BY i.total_pixel_matrix_columns DESC LIMIT 1", (VL_WSI,)).fetchone()
    return dict(zip(empty, row)) if row else empty


class RunningServer:
    """A documented server command, in the background."""

    def __init__(self, command: str, scratch: Scratch, env: dict[str, str]):
        match = re.search(r"--data-dir\s+(\S+)", command)
        self.data_dir = Path(match.group(1)) if match else scratch.root / "slidearchive-data"
        self.command = command
        self.output = scratch.root / f"server-{time.monotonic_ns()}.log"
        self.http_port = int(m.group(1)) if (m := re.search(r"--http-port\s+(\d+)", command)) else scratch.http_port
        self.dimse_port = int(m.group(1)) if (m := re.search(r"--dimse-port\s+(\d+)", command)) else scratch.dimse_port
        code, comment = re.match(r"(.*?)(\s+#.*)?$", command).groups()
        if "--http-port" not in code:  # the embedded default ports, as substituted
            command = f"{code} --http-port {scratch.http_port} --dimse-port {scratch.dimse_port}{comment or ''}"
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", command], cwd=scratch.root,
                                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout=180)
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.command!r} exited {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", self.dimse_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"{self.command!r} did not become ready:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def admin_key(self) -> str:
        match = re.search(r"export SLIDEARCHIVE_KEY=(\S+)", self.log())
        return match.group(1) if match else ""

    def stop(self) -> None:
        """SIGTERM, as the README says; it must exit cleanly."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.command!r} did not stop within {STOP_TIMEOUT} s of SIGTERM:\n{self.log()[-3000:]}")
        assert self.process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), \
            f"{self.command!r} exited {self.process.returncode} on SIGTERM:\n{self.log()[-3000:]}"


def _installed(extra: str = "") -> None:
    """start.sh / test.sh install only when needed: make sure here that nothing needs it."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "installed.py"), *([extra] if extra else [])],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"install slidearchive's dependencies first (pip install -e '.[test]'):\n" \
                                   f"{result.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("document", documents_with_commands(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_documented_commands_run_as_written(document: Path, tmp_path):
    scratch = Scratch(tmp_path)
    documented = commands(document.read_text())
    servers: list[RunningServer] = []
    keys: dict[Path, str] = {}
    current: RunningServer | None = None
    try:
        if not any(SERVER_COMMAND.search(c) for _, c in documented):
            current = RunningServer("slidearchive serve", scratch, scratch.environment(Path("/nonexistent"), ""))
            servers.append(current)
            keys[current.data_dir] = current.admin_key()
        for line, written in documented:
            command = scratch.substitute(written)
            data_dir = current.data_dir if current else scratch.root / "slidearchive-data"
            env = scratch.environment(data_dir, keys.get(data_dir, ""))
            where = f"{document.name}:{line}: {written}"
            if "scripts/start.sh" in command:
                _installed()
            if "scripts/test.sh" in command:
                _installed("test")
            if SERVER_COMMAND.search(command):
                if current is not None:
                    current.stop()
                current = RunningServer(command, scratch, env)
                servers.append(current)
                keys.setdefault(current.data_dir, current.admin_key())
                continue
            result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=scratch.root, env=env,
                                    capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, f"{where}\nexit {result.returncode}\n{result.stdout[-2000:]}\n" \
                                           f"{result.stderr[-3000:]}"
            assert "Traceback" not in result.stderr, f"{where}\n{result.stderr[-3000:]}"
    finally:
        problems = []
        for server in servers:
            try:
                server.stop()
            except AssertionError as e:
                problems.append(str(e))
        assert not problems, "\n".join(problems)
