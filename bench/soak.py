"""Soak: mixed load from several clients against one real server for a long time.

    python bench/soak.py [--minutes 30] [--clients 1] [--keep 150]

Each client kind runs in its own threads, all at once, against a fresh
``slidearchive serve`` (2 HTTP workers, DIMSE, embedded index) on loopback:

- STOW-RS of new slides (three levels each, basic de-identification),
- C-STORE of new slides (an AE with the identified policy, through pynetdicom),
- random frames, QIDO-RS at the three levels, /api/search,
- deletes of whole studies, keeping about ``--keep`` instances stored, and
  requests for deleted instances (which must answer 404).

At the end: ``verify --checksums`` must be clean; every instance the answers
said was stored and that was not deleted must be in QIDO and retrievable, every
deleted one must answer 404; no answer other than the ones the load asked
for; the resident memory of all server processes, sampled every few seconds,
is reported (start after warm-up, end, max, slope). Exit status 1 on any fault.
Not run in CI (it is long); numbers go in the README's "Soak" section.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

import procs  # noqa: E402
from servers import SlideArchive  # noqa: E402

IDENTIFIED_AE = "SOAKID"
CONFIG = f"""
[auth]
enabled = false
[deid]
default = "basic"
[deid.policies.basic]
[deid.policies.identified]
identified = true
[deid.sources]
ae = {{ "{IDENTIFIED_AE}" = "identified" }}
"""
TIMEOUT = 60


class Slides:
    """New slides on demand: the seed slide's bytes under fresh UIDs of the same length."""

    def __init__(self, workdir: Path):
        from pydicom import dcmread
        from slides import SlideSpec, make_slide

        files = [p for p in make_slide(workdir, SlideSpec(width=512, height=512, tile=128, seed=3))
                 if p.name.startswith("level")]
        self.files = [p.read_bytes() for p in files]
        first = dcmread(files[0], stop_before_pixels=True)
        self.study, self.series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        self.sops = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
        self.frames = [int(dcmread(p, stop_before_pixels=True).get("NumberOfFrames", 1)) for p in files]
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    @staticmethod
    def _like(uid: str, n: int, slot: int) -> str:
        return uid[:-13] + f"{slot}{n:012d}"

    def new(self) -> tuple[str, str, list[tuple[str, bytes, int]]]:
        """(study, series, [(sop, bytes, frames)]) of a slide never sent before."""
        with self.lock:
            n = next(self.counter)
        study, series = self._like(self.study, n, 1), self._like(self.series, n, 2)
        out = []
        for i, (data, sop, frames) in enumerate(zip(self.files, self.sops, self.frames)):
            new_sop = self._like(sop, n, 3 + i)
            data = data.replace(self.study.encode(), study.encode()).replace(self.series.encode(), series.encode())
            out.append((new_sop, data.replace(sop.encode(), new_sop.encode()), frames))
        return study, series, out


class Ledger:
    """What the answers said: held instances (sop -> study, series, frames) and deleted ones."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held: dict[str, tuple[str, str, int]] = {}
        self.deleted: set[str] = set()
        self.deleting: set[str] = set()
        self.counts: Counter = Counter()
        self.faults: list[str] = []

    def fault(self, text: str) -> None:
        with self.lock:
            self.faults.append(text)
        print("FAULT", text, file=sys.stderr, flush=True)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def pick(self) -> tuple[str, tuple[str, str, int]] | None:
        with self.lock:
            if not self.held:
                return None
            sop = random.choice(list(self.held))
            return sop, self.held[sop]


def _stow(base: str, slides: Slides, ledger: Ledger, session: requests.Session) -> None:
    _, _, parts = slides.new()
    boundary = "soakboundary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
                    for _, data, _ in parts) + b"--" + boundary.encode() + b"--\r\n"
    r = session.post(f"{base}/studies", data=body, timeout=TIMEOUT, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    if r.status_code not in (200, 202):
        return ledger.fault(f"STOW answered {r.status_code}: {r.text[:200]}")
    refs = r.json().get("00081199", {}).get("Value", [])
    if len(refs) != len(parts) or "00081198" in r.json():
        return ledger.fault(f"STOW stored {len(refs)} of {len(parts)}")
    with ledger.lock:
        for ref, (_, _, frames) in zip(refs, parts):
            url = ref["00081190"]["Value"][0]
            study, rest = url.split("/studies/")[1].split("/series/")
            series, sop = rest.split("/instances/")
            ledger.held[sop] = (study, series, frames)
    ledger.count("stow")


class _SCU:
    def __init__(self, port: int):
        from pynetdicom import AE, _config
        from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

        _config.STORE_SEND_CHUNKED_DATASET = True
        self.ae = AE(ae_title=IDENTIFIED_AE)
        self.ae.add_requested_context("1.2.840.10008.5.1.4.1.1.77.1.6", [JPEGBaseline8Bit, ExplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT
        self.port = port
        self.assoc = None

    def store(self, path: Path):
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title="SLIDEARCHIVE")
            if not self.assoc.is_established:
                return None
        return self.assoc.send_c_store(path)


def _cstore(scu: _SCU, slides: Slides, ledger: Ledger, spool: Path) -> None:
    """One slide, level by level; held only once complete (a study delete must not overtake the last level)."""
    study, series, parts = slides.new()
    for sop, data, frames in parts:
        path = spool / f"{sop}.dcm"
        path.write_bytes(data)
        try:
            answer = scu.store(path)
        finally:
            path.unlink()
        status = answer.get("Status") if answer is not None else None
        if status != 0x0000:
            return ledger.fault(f"C-STORE answered {status if status is None else hex(status)}")
    with ledger.lock:
        for sop, _, frames in parts:
            ledger.held[sop] = (study, series, frames)
    ledger.count("cstore")


def _frame(base: str, ledger: Ledger, session: requests.Session) -> None:
    picked = ledger.pick()
    if picked is None:
        return
    sop, (study, series, frames) = picked
    r = session.get(f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/{random.randint(1, frames)}",
                    headers={"Accept": "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*"},
                    timeout=TIMEOUT)
    _expect(ledger, r, sop, "frame")


def _expect(ledger: Ledger, r: requests.Response, sop: str, what: str) -> None:
    if r.status_code == 200:
        return ledger.count(what)
    with ledger.lock:
        raced = sop in ledger.deleted or sop in ledger.deleting
    if r.status_code == 404 and raced:
        return ledger.count(f"{what} 404 (deleted meanwhile)")
    ledger.fault(f"{what} of {sop} answered {r.status_code}: {r.text[:200]}")


def _qido(base: str, ledger: Ledger, session: requests.Session) -> None:
    picked = ledger.pick()
    level = random.choice(["studies", "series", "instances"])
    if picked is not None and random.random() < 0.5:
        sop, (study, series, _) = picked
        url = random.choice([f"{base}/studies/{study}/series", f"{base}/studies/{study}/series/{series}/instances",
                             f"{base}/instances?SOPInstanceUID={sop}"])
    else:
        url = f"{base}/{level}?limit={random.randint(1, 50)}&offset={random.randint(0, 20)}&ModalitiesInStudy=SM"
        sop = ""
    r = session.get(url, headers={"Accept": "application/dicom+json"}, timeout=TIMEOUT)
    if r.status_code != 200:
        ledger.fault(f"QIDO {url} answered {r.status_code}: {r.text[:200]}")
    else:
        ledger.count("qido")


def _search(root: str, ledger: Ledger, session: requests.Session) -> None:
    query = random.choice(["", "q=breast", "facet=specimen.stain_codes,scanner.manufacturer",
                           "pyramid.level_count=3", "sort=-study.date&size=20", "q=slide&page=2&size=5"])
    r = session.get(f"{root}/api/search?{query}", timeout=TIMEOUT)
    if r.status_code != 200:
        ledger.fault(f"search {query} answered {r.status_code}: {r.text[:200]}")
    else:
        ledger.count("search")


def _delete(base: str, ledger: Ledger, session: requests.Session, keep: int) -> None:
    with ledger.lock:
        if len(ledger.held) <= keep:
            victim = None
        else:
            study = ledger.held[random.choice(list(ledger.held))][0]
            victim = [s for s, (st, _, _) in ledger.held.items() if st == study]
            for sop in victim:
                del ledger.held[sop]
            ledger.deleting.update(victim)
    if victim is None:
        # nothing to delete yet: ask for one that is gone (the load asks for this 404)
        with ledger.lock:
            gone = random.choice(sorted(ledger.deleted)) if ledger.deleted else None
        if gone is not None:
            r = session.get(f"{base}/instances?SOPInstanceUID={gone}", headers={"Accept": "application/dicom+json"},
                            timeout=TIMEOUT)
            if r.status_code != 200 or r.json():
                ledger.fault(f"a deleted instance is still found: {r.status_code} {r.text[:100]}")
            ledger.count("ask for deleted")
        time.sleep(0.2)
        return
    r = session.delete(f"{base}/studies/{study}", timeout=TIMEOUT)
    with ledger.lock:
        ledger.deleting.difference_update(victim)
        ledger.deleted.update(victim)
    if r.status_code not in (200, 202, 204):
        ledger.fault(f"DELETE study answered {r.status_code}: {r.text[:200]}")
    else:
        ledger.count("delete study")


def _run_client(name: str, step, stop: threading.Event, ledger: Ledger) -> None:
    while not stop.is_set():
        try:
            step()
        except Exception as e:  # noqa: BLE001 - a broken connection or timeout is a fault of the server
            ledger.fault(f"{name}: {type(e).__name__}: {str(e)[:200]}")
            time.sleep(1)


def _sample_memory(root: int, stop: threading.Event, samples: list, interval: float) -> None:
    t0 = time.time()
    while not stop.wait(interval):
        pids = procs.process_tree(root)
        samples.append((time.time() - t0, sum(procs.rss_kb(p) for p in pids) / 1024, len(pids)))


def _final_checks(server: SlideArchive, ledger: Ledger, config: Path) -> dict:
    base = server.dicomweb_root
    out: dict = {}
    time.sleep(3)
    result = subprocess.run([sys.executable, "-m", "archive.cli", "verify", "--data-dir", str(server.workdir / "data"),
                             "--config", str(config), "--checksums"], capture_output=True, text=True, cwd=REPO)
    out["verify"] = result.stdout.strip().replace("\n", "; ")
    if result.returncode != 0:
        ledger.fault(f"verify --checksums: {result.stdout} {result.stderr[-500:]}")
    r = requests.get(f"{base}/instances?limit=10000", headers={"Accept": "application/dicom+json"}, timeout=TIMEOUT)
    found = {row["00080018"]["Value"][0] for row in r.json()}
    out["held"], out["qido_instances"], out["deleted"] = len(ledger.held), len(found), len(ledger.deleted)
    if found != set(ledger.held):
        ledger.fault(f"QIDO has {len(found)} instances, the answers said {len(ledger.held)}: "
                     f"lost {len(set(ledger.held) - found)}, unexpected {len(found - set(ledger.held))}")
    with requests.Session() as s:
        for sop, (study, series, _) in ledger.held.items():
            r = s.get(f"{base}/studies/{study}/series/{series}/instances/{sop}",
                      headers={"Accept": "multipart/related; type=\"application/dicom\""}, timeout=TIMEOUT)
            if r.status_code != 200 or len(r.content) < 1000:
                ledger.fault(f"held instance {sop} answered {r.status_code}")
        for sop in list(ledger.deleted)[:200]:
            r = s.get(f"{base}/instances?SOPInstanceUID={sop}", headers={"Accept": "application/dicom+json"},
                      timeout=TIMEOUT)
            if r.status_code != 200 or r.json():
                ledger.fault(f"deleted instance {sop} is still answered")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=1, help="threads per kind of client")
    parser.add_argument("--keep", type=int, default=150, help="delete studies while more instances than this are held")
    parser.add_argument("--interval", type=float, default=5, help="seconds between memory samples")
    args = parser.parse_args()
    procs.exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        slides = Slides(work / "seed")
        import os

        os.environ["BENCH_SLIDEARCHIVE_CONFIG"] = CONFIG
        server = SlideArchive(work / "server")
        ledger, stop, samples = Ledger(), threading.Event(), []
        server.start()
        try:
            procs.wait_tcp(server.dimse_port, 60)
            config = server.workdir / "slidearchive.toml"
            base, root = server.dicomweb_root, server.base
            spool = work / "spool"
            spool.mkdir()
            threads = [threading.Thread(target=_sample_memory, args=(server.pid, stop, samples, args.interval),
                                        daemon=True)]
            for n in range(args.clients):
                sessions = {k: requests.Session() for k in ("stow", "frame", "qido", "search", "delete")}
                scu = _SCU(server.dimse_port)
                kinds = {
                    "stow": lambda s=sessions["stow"]: _stow(base, slides, ledger, s),
                    "cstore": lambda scu=scu: _cstore(scu, slides, ledger, spool),
                    "frame": lambda s=sessions["frame"]: _frame(base, ledger, s),
                    "qido": lambda s=sessions["qido"]: _qido(base, ledger, s),
                    "search": lambda s=sessions["search"]: _search(root, ledger, s),
                    "delete": lambda s=sessions["delete"]: _delete(base, ledger, s, args.keep),
                }
                threads += [threading.Thread(target=_run_client, args=(f"{k}-{n}", step, stop, ledger), daemon=True)
                            for k, step in kinds.items()]
            started = time.time()
            for t in threads:
                t.start()
            deadline = started + args.minutes * 60
            while time.time() < deadline:
                time.sleep(min(30, max(0.1, deadline - time.time())))
                with ledger.lock:
                    counts = dict(ledger.counts)
                    held, faults = len(ledger.held), len(ledger.faults)
                mem = samples[-1][1] if samples else 0
                print(f"[{(time.time() - started) / 60:5.1f} min] held {held}, RSS {mem:.0f} MB, faults {faults}, "
                      f"{counts}", flush=True)
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
            elapsed = time.time() - started
            checks = _final_checks(server, ledger, config)
        finally:
            stop.set()
            server.stop()
    report(args, elapsed, ledger, samples, checks)
    return 1 if ledger.faults else 0


def report(args, elapsed: float, ledger: Ledger, samples: list, checks: dict) -> None:
    warm = [s for s in samples if s[0] >= min(60, elapsed / 10)] or samples
    rss = [m for _, m, _ in warm]
    quarter = max(1, len(rss) // 4)
    first, last = sum(rss[:quarter]) / quarter, sum(rss[-quarter:]) / quarter
    slope = 0.0
    if len(warm) > 2:  # least squares, MB per hour
        ts = [t for t, _, _ in warm]
        mt, mr = sum(ts) / len(ts), sum(rss) / len(rss)
        slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss)) / max(sum((t - mt) ** 2 for t in ts), 1e-9) * 3600
    total = sum(ledger.counts.values())
    print()
    print(f"## Soak: {elapsed / 60:.1f} min, {args.clients} client(s) of each kind")
    print()
    print("| what | count | per second |")
    print("|---|---|---|")
    for what, n in sorted(ledger.counts.items()):
        print(f"| {what} | {n} | {n / elapsed:.1f} |")
    print(f"| all requests/steps | {total} | {total / elapsed:.1f} |")
    print()
    print(f"- server RSS (all processes, after warm-up): start {rss[0]:.0f} MB, end {rss[-1]:.0f} MB, "
          f"max {max(rss):.0f} MB; first-quarter mean {first:.0f} MB, last-quarter mean {last:.0f} MB, "
          f"slope {slope:+.1f} MB/h ({len(samples)} samples)")
    print(f"- at the end: {checks.get('held')} instances held, {checks.get('qido_instances')} in QIDO, "
          f"{checks.get('deleted')} deleted; verify: {checks.get('verify')}")
    print(f"- faults: {len(ledger.faults)}")
    for fault in ledger.faults[:20]:
        print(f"  - {fault}")
    print(json.dumps({"minutes": elapsed / 60, "counts": dict(ledger.counts), "rss_start_mb": rss[0],
                      "rss_end_mb": rss[-1], "rss_max_mb": max(rss), "rss_slope_mb_per_h": slope,
                      "faults": len(ledger.faults), **checks}))


if __name__ == "__main__":
    sys.exit(main())
