"""Benchmark: a 100,000-cell annotation from GeoJSON into DICOM and back, as GeoJSON and as bulkdata.

    python bench/results_bench.py [--cells 100000] [--vertices 16]

Two views of the same work, printed as one Markdown table:

- "library": the conversion code alone in this process (time, peak RSS of the process,
  which includes the GeoJSON input held parsed as Python objects, about 0.9 GB at 100k cells).
- "HTTP": a real slidearchive server (identified policy, 2 workers) on loopback,
  timed from the client; memory is the peak RSS of the server processes during
  that request (VmHWM, reset before each step via /proc/PID/clear_refs) and the
  largest growth of one process over its RSS when the step began.

Cells are QuPath-like detections: a polygon of ``--vertices`` points with
float coordinates, a class and two measurements.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

WIDTH, HEIGHT = 8192, 6144


def cells_geojson(n: int, vertices: int, seed: int = 1) -> dict:
    """n cell polygons (closed rings, vertices + 1 positions) spread over the slide."""
    rng = np.random.default_rng(seed)
    centres = np.column_stack([rng.uniform(50, WIDTH - 50, n), rng.uniform(50, HEIGHT - 50, n)])
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radii = rng.uniform(4, 12, (n, 1))
    xs = centres[:, :1] + radii * np.cos(angles)
    ys = centres[:, 1:] + radii * np.sin(angles)
    features = []
    classes = ("Tumor", "Lymphocyte", "Stroma")
    for i in range(n):
        ring = np.column_stack([xs[i], ys[i]]).tolist()
        ring.append(ring[0])
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "detection", "classification": {"name": classes[i % 3]},
                                        "measurements": {"Area": float(np.pi * radii[i, 0] ** 2),
                                                         "Perimeter": float(2 * np.pi * radii[i, 0])}}})
    return {"type": "FeatureCollection", "features": features}


def _tree_pids(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (tid / "children").read_text().split()]
        except OSError:
            pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_hwm(pids: list[int]) -> dict[int, int]:
    """Reset each process's peak RSS to its current RSS; returns the current RSS (kB) per pid."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass
    return {pid: _status_kb(pid, "VmRSS") for pid in pids}


def _peak(base: dict[int, int]) -> tuple[float, float]:
    """(largest peak RSS, largest growth of one process over its RSS at reset), in MB."""
    peaks = {pid: _status_kb(pid, "VmHWM") for pid in base}
    return max(peaks.values()) / 1024, max(peaks[p] - base[p] for p in base) / 1024


def library_rows(geojson: dict, slide_header) -> list[tuple[str, float, float, float, str]]:
    """Time and peak RSS of this process for the conversions alone (after a warm-up that loads highdicom)."""
    import os

    from pydicom import dcmread
    from pydicom.filewriter import dcmwrite

    from archive.results import annotations
    from dicomweb import results as results_api

    creator = annotations.Creator({"name": "bench", "version": "1"})
    warm = {"type": "FeatureCollection", "features": geojson["features"][:10]}
    annotations.to_features(annotations.build(slide_header, annotations.parse_geojson(warm, WIDTH, HEIGHT), creator))
    me = [os.getpid()]
    rows = []
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        base = _reset_hwm(me)
        t = time.perf_counter()
        groups = annotations.parse_geojson(geojson, WIDTH, HEIGHT)
        ds = annotations.build(slide_header, groups, creator)
        dcmwrite(f.name, ds, enforce_file_format=True)
        rows.append(("library: GeoJSON (parsed) -> DICOM file", time.perf_counter() - t, *_peak(base),
                     f"{Path(f.name).stat().st_size / 2**20:.1f} MB DICOM"))
        del ds, groups
        base = _reset_hwm(me)
        t = time.perf_counter()
        size = 0
        batch: list = []
        for feature in annotations.iter_features(dcmread(f.name), arrays=results_api.orjson is not None):
            batch.append(feature)
            if len(batch) == results_api.STREAM_BATCH:
                size += len(results_api._dump_features(batch)) + 1
                batch = []
        size += len(results_api._dump_features(batch)) if batch else 0
        rows.append(("library: DICOM file -> GeoJSON text (as the server streams it)", time.perf_counter() - t,
                     *_peak(base), f"{size / 2**20:.1f} MB JSON"))
    return rows


def http_rows(server, series: str, body: bytes, cells: int) -> list[tuple[str, float, float, float, str]]:
    from dicomweb_client.api import DICOMwebClient

    pids = _tree_pids(server.process.pid)
    rows = []

    def step(name, fn):
        base = _reset_hwm(pids)
        t = time.perf_counter()
        out, note = fn()
        rows.append((name, time.perf_counter() - t, *_peak(base), note))
        return out

    def post():
        req = urllib.request.Request(f"{server.url}/api/slides/{series}/annotations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read()), f"{len(body) / 2**20:.1f} MB JSON in"

    warm = json.dumps({"geojson": cells_geojson(3, 4), "annotator": "Warm^Up"}).encode()
    urllib.request.urlopen(urllib.request.Request(  # loads highdicom in the workers: not part of the numbers
        f"{server.url}/api/slides/{series}/annotations", data=warm, method="POST",
        headers={"Content-Type": "application/json"}), timeout=120).read()
    created = step("HTTP: POST GeoJSON (build + ingest)", post)

    def get_geojson():
        with urllib.request.urlopen(f"{server.url}/api/slides/{series}/annotations?instance="
                                    f"{created['sop_instance']}", timeout=600) as r:
            data = r.read()
        return data, f"{len(data) / 2**20:.1f} MB JSON out"

    back = step("HTTP: GET GeoJSON (received, not parsed)", get_geojson)
    assert len(json.loads(back)["features"]) == cells
    client = DICOMwebClient(url=server.dicomweb)

    def get_bulk():
        meta = client.retrieve_instance_metadata(created["study"], created["series"], created["sop_instance"])
        total = 0
        for group in meta["006A0002"]["Value"]:
            for tag in ("00660022", "00660040"):
                if "BulkDataURI" in group.get(tag, {}):
                    total += len(client.retrieve_bulkdata(group[tag]["BulkDataURI"])[0])
        return None, f"{total / 2**20:.1f} MB bulkdata (coords + indices)"

    step("HTTP: metadata + bulkdata (dicomweb-client)", get_bulk)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--vertices", type=int, default=16)
    args = ap.parse_args()

    from conftest import IDENTIFIED, Server
    from slides import SlideSpec, make_slide
    from pydicom import dcmread

    geojson = cells_geojson(args.cells, args.vertices)
    body = json.dumps({"geojson": geojson, "algorithm": {"name": "bench", "version": "1"}}).encode()
    with tempfile.TemporaryDirectory(prefix="results-bench-") as tmp:
        root = Path(tmp)
        spec = SlideSpec(width=WIDTH, height=HEIGHT, tile=512, levels=1, label=False, overview=False)
        paths = make_slide(root / "slide", spec)
        header = dcmread(paths[0], stop_before_pixels=True)
        rows = library_rows(geojson, header)
        (root / "server").mkdir()
        server = Server(root / "server", IDENTIFIED, dimse=False).start()
        try:
            from test_results_support import stow

            status, _ = stow(server, paths)
            assert status == 200, status
            rows += http_rows(server, str(header.SeriesInstanceUID), body, args.cells)
        finally:
            server.stop()
    print(f"\n{args.cells:,} cells x {args.vertices} vertices ({args.cells * args.vertices:,} points), "
          "float64 coordinates, 2 measurements\n")
    print("| step | seconds | peak RSS (MB) | growth during step (MB) | size |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, peak, growth, note in rows:
        print(f"| {name} | {seconds:.2f} | {peak:.0f} | {growth:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
