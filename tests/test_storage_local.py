"""The local storage area's commit: the flushes an acknowledged instance needs to survive a
power cut, in their order, and the ids' directories (archive/storage/local.py)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from archive.storage import local
from archive.storage.local import StorageArea


def _commit(area: StorageArea, data: bytes) -> str:
    temp = area.new_temp()
    temp.write_bytes(data)
    return area.commit(temp)


@pytest.fixture
def flushes(monkeypatch) -> list[tuple[str, str]]:
    """(call, path) of every mkdir, rename, fdatasync and fsync, the real calls made as well."""
    calls: list[tuple[str, str]] = []

    def spy(name, path_of):
        real = getattr(os, name)

        def call(*args, **kwargs):
            calls.append((name, path_of(*args)))
            return real(*args, **kwargs)
        monkeypatch.setattr(os, name, call)

    spy("fdatasync", lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
    spy("fsync", lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
    spy("rename", lambda src, dst: str(dst))
    spy("mkdir", lambda path, *_: str(path))
    return calls


def test_commit_flushes_the_file_then_its_directory(tmp_path, flushes):
    area = StorageArea(tmp_path / "storage")
    flushes.clear()  # the temp directory made
    first = _commit(area, b"first")
    final = area.path(first)
    # A new directory: each level made is flushed into its parent before the file is renamed in.
    assert flushes[0][0] == "fdatasync" and Path(flushes[0][1]).parent == area.tmp
    assert flushes[1:] == [("mkdir", str(final.parent.parent)), ("fsync", str(area.root)),
                           ("mkdir", str(final.parent)), ("fsync", str(final.parent.parent)),
                           ("rename", str(final)), ("fsync", str(final.parent))]
    flushes.clear()
    second = _commit(area, b"second")
    # The same directory again: the file's data, the rename, the directory naming it; no more.
    assert area.path(second).parent == final.parent
    assert [c for c, _ in flushes] == ["fdatasync", "rename", "fsync"]
    assert flushes[1:] == [("rename", str(area.path(second))), ("fsync", str(final.parent))]
    assert area.path(first).read_bytes() == b"first" and area.path(second).read_bytes() == b"second"


def test_ids_share_a_directory_for_a_while_then_draw_another(tmp_path):
    area = StorageArea(tmp_path / "storage")
    count = local.FILES_PER_DIRECTORY + 1
    ids = [_commit(area, f"file {i}".encode()) for i in range(count)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == count
    assert len({i[:4] for i in ids[:-1]}) == 1  # one directory for the first FILES_PER_DIRECTORY
    assert len({i[:4] for i in ids}) <= 2
    for n, i in enumerate(ids):
        assert area.path(i).read_bytes() == f"file {n}".encode()
    assert set(area.objects()) == set(ids)
    # The random part is random: no id repeats another's tail.
    assert len({i[4:] for i in ids}) == count


def test_directories_are_drawn_at_random(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "FILES_PER_DIRECTORY", 1)
    area = StorageArea(tmp_path / "storage")
    ids = [_commit(area, b"x") for _ in range(40)]
    assert len({i[:4] for i in ids}) >= 35  # 40 draws of 65,536: repeats are rare
    assert len({i[:2] for i in ids}) >= 20


def test_a_failed_commit_leaves_the_next_one_working(tmp_path):
    area = StorageArea(tmp_path / "storage")
    with pytest.raises(OSError):
        area.commit(area.tmp / "missing.part")  # nothing to flush: refused before any directory is made
    sid = _commit(area, b"after")
    assert area.path(sid).read_bytes() == b"after"
