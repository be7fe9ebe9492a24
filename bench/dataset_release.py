"""Time to release a dataset of N series (default 100,000) from generated catalog rows.

One real slide is generated and stored through the ingest path; its patient, study,
series and instance rows are then copied N times (new UIDs, patient ids, storage ids
and checksums; a stub header BLOB, which a release never reads) into the same
catalog, four series per case. A dataset choosing the whole collection is then
released through ``datasets.release.freeze``, exactly what the CLI and the API
call, and the manifest is read back and checked (every instance listed once).

    python bench/dataset_release.py                      # 100,000 series x 3 instances
    python bench/dataset_release.py --series 10000 --instances 6

Prints the times (freeze, load_manifest), the rows written and the peak RSS of this process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

BODY = {"id": "bench", "title": "Benchmark dataset", "description": "Generated catalog rows for the release benchmark.",
        "license": "CC-BY-4.0", "contributors": [{"name": "Bench, Mark"}], "collection": "bench"}


def _template(archive, root: Path) -> dict[str, dict]:
    """Store one real slide; return its rows (study, series, instances) as dicts."""
    from archive.ingest import Origin
    from slides import SlideSpec, make_slide

    for path in make_slide(root / "slide", SlideSpec(width=1024, height=768, label=False)):
        archive.store_file(path, Origin("import", collection="bench"))
    db = archive.catalog._db()
    study = dict(db.execute("SELECT * FROM study").fetchone())
    series = dict(db.execute("SELECT * FROM series").fetchone())
    instances = [dict(r) for r in db.execute("SELECT * FROM instance ORDER BY pk")]
    return {"study": study, "series": series, "instances": instances}


def generate(archive, template: dict, n_series: int, per_instance: int, per_case: int) -> None:
    db = archive.catalog._db()
    study_t, series_t = template["study"], template["series"]
    inst_t = template["instances"][:per_instance]
    while len(inst_t) < per_instance:
        inst_t.append(template["instances"][len(inst_t) % len(template["instances"])])
    pk = {t: db.execute(f"SELECT coalesce(max(pk), 0) FROM {t}").fetchone()[0] for t in ("patient", "study",
                                                                                        "series", "instance")}
    stub = b"x"
    with archive.catalog.transaction() as tx:
        for s in range(n_series):
            if s % per_case == 0:
                pk["patient"] += 1
                pk["study"] += 1
                tx.execute("INSERT INTO patient(pk, patient_id, issuer_of_patient_id, patient_name, patient_sex) "
                           "VALUES (?,?,?,?,?)", (pk["patient"], f"BENCH-{pk['patient']}", "", "ANON", "F"))
                values = dict(study_t, pk=pk["study"], patient_fk=pk["patient"],
                              study_instance_uid=f"2.25.{pk['study']}1")
                tx.execute(f"INSERT INTO study({','.join(values)}) VALUES ({','.join('?' * len(values))})",
                           list(values.values()))
                tx.execute("INSERT INTO study_collection(study_fk, collection) VALUES (?, 'bench')", (pk["study"],))
            pk["series"] += 1
            values = dict(series_t, pk=pk["series"], study_fk=pk["study"], series_instance_uid=f"2.25.{pk['series']}2")
            tx.execute(f"INSERT INTO series({','.join(values)}) VALUES ({','.join('?' * len(values))})",
                       list(values.values()))
            rows = []
            for t in inst_t:
                pk["instance"] += 1
                rows.append(dict(t, pk=pk["instance"], series_fk=pk["series"],
                                 sop_instance_uid=f"2.25.{pk['instance']}3", storage_id=f"bench{pk['instance']:012d}",
                                 sha256=secrets.token_hex(32), frame_index=None, header=stub))
            names = list(rows[0])
            tx.executemany(f"INSERT INTO instance({','.join(names)}) VALUES ({','.join('?' * len(names))})",
                           [[r[c] for c in names] for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=3, help="instances per series (a slide has 5-10)")
    parser.add_argument("--series-per-case", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()

    from archive.auth.access import SYSTEM
    from archive.config import load_settings
    from archive.service import Archive
    from datasets import model, release

    root = Path(tempfile.mkdtemp(prefix="dsbench-"))
    try:
        config = root / "config.toml"
        config.write_text("[auth]\nenabled = false\n[audit]\nenabled = false\n")
        archive = Archive(load_settings(config, data_dir=root / "data"))
        template = _template(archive, root)
        t0 = time.perf_counter()
        generate(archive, template, args.series - 1, args.instances, args.series_per_case)
        generated = time.perf_counter() - t0
        model.create(archive.catalog, BODY, "bench")
        t0 = time.perf_counter()
        made = release.freeze(archive.catalog, "bench", principal=SYSTEM, released_by="bench", key=b"k" * 32)
        freeze_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        manifest = release.load_manifest(archive.catalog, made.id)
        load_s = time.perf_counter() - t0
        sops = {i.sop_instance_uid for i in manifest.items}
        assert len(sops) == len(manifest.items) == made.counts["instances"], "manifest lists an instance twice"
        assert made.counts["series"] == args.series, made.counts["series"]
        size_mb = os.path.getsize(archive.settings.catalog_path) / 1e6
        result = {"series": made.counts["series"], "instances": made.counts["instances"],
                  "cases": made.counts["cases"], "studies": made.counts["studies"],
                  "generate_s": round(generated, 1), "freeze_s": round(freeze_s, 2),
                  "load_manifest_s": round(load_s, 2), "catalog_mb": round(size_mb, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "load_average": os.getloadavg()[0]}
        print(json.dumps(result, indent=1))
        print(f"\nrelease of {result['series']:,} series ({result['instances']:,} instances, {result['cases']:,} cases): "
              f"{freeze_s:.1f} s; manifest read back in {load_s:.1f} s; peak RSS {result['peak_rss_mb']} MB "
              f"(load average {result['load_average']:.1f})")
        return 0
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
