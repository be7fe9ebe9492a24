"""Which Python S3 client the archive uses, by measurement against a real s3proxy on loopback.

Two things matter to the archive: a ranged GET of one frame (10-100 KB at a random
offset of a large object), single-threaded latency and with 4 threads at once; and a
multipart upload streamed from a spooled file (bounded memory), MB/s. Each client is
set up the way the archive would use it (one shared client, a connection pool, path-
style addressing). Bounded: a few hundred requests and one 192 MB object per client,
after a warm-up round (s3proxy's JIT).

    python3 bench/s3_clients.py [--frames 400] [--upload-mb 192] [--clients boto3,obstore,minio]

minio is not a dependency of the archive: `pip install minio` to include it.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import s3_server  # noqa: E402

PART = 16 << 20
BUCKET = "bench"


def boto3_client(s3: s3_server.S3Proxy):
    import boto3
    from botocore.config import Config

    c = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key, region_name="us-east-1",
                     config=Config(s3={"addressing_style": "path"}, max_pool_connections=16,
                                   retries={"max_attempts": 1}))

    def get(key, off, n):
        return c.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{off + n - 1}")["Body"].read()

    def upload(key, path):
        m = c.create_multipart_upload(Bucket=BUCKET, Key=key)
        parts = []
        with open(path, "rb") as f:
            while chunk := f.read(PART):
                r = c.upload_part(Bucket=BUCKET, Key=key, UploadId=m["UploadId"], PartNumber=len(parts) + 1, Body=chunk)
                parts.append({"PartNumber": len(parts) + 1, "ETag": r["ETag"]})
        c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=m["UploadId"], MultipartUpload={"Parts": parts})

    return get, upload


def obstore_client(s3: s3_server.S3Proxy):
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=s3.endpoint, access_key_id=s3.access_key, secret_access_key=s3.secret_key,
                    region="us-east-1", client_options={"allow_http": True})

    def get(key, off, n):
        return bytes(obstore.get_range(store, key, start=off, length=n))

    def upload(key, path):
        with open(path, "rb") as f:
            obstore.put(store, key, f, chunk_size=PART, max_concurrency=2)

    return get, upload


def minio_client(s3: s3_server.S3Proxy):
    from minio import Minio

    c = Minio(s3.endpoint.removeprefix("http://"), access_key=s3.access_key, secret_key=s3.secret_key,
              secure=False, region="us-east-1")

    def get(key, off, n):
        r = c.get_object(BUCKET, key, offset=off, length=n)
        try:
            return r.read()
        finally:
            r.close()
            r.release_conn()

    def upload(key, path):
        c.fput_object(BUCKET, key, str(path), part_size=PART)

    return get, upload


CLIENTS = {"boto3": boto3_client, "obstore": obstore_client, "minio": minio_client}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def measure(name: str, s3: s3_server.S3Proxy, source: Path, frames: int, seed: int) -> dict:
    get, upload = CLIENTS[name](s3)
    size = source.stat().st_size
    t = time.perf_counter()
    upload(f"{name}/slide", source)
    upload_s = time.perf_counter() - t
    rng = random.Random(seed)
    ranges = [(rng.randrange(0, size - 100_000), rng.randrange(10_000, 100_000)) for _ in range(frames)]
    for off, n in ranges[:20]:  # warm the pool
        get(f"{name}/slide", off, n)
    lat = []
    cpu = time.process_time()
    for off, n in ranges:
        t = time.perf_counter()
        data = get(f"{name}/slide", off, n)
        lat.append(time.perf_counter() - t)
        assert len(data) == n
    cpu = time.process_time() - cpu
    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda r: get(f"{name}/slide", *r), ranges))
    parallel = time.perf_counter() - t
    return {"client": name, "upload_MBps": size / upload_s / 1e6, "p50_ms": statistics.median(lat) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "serial_per_s": len(lat) / sum(lat),
            "cpu_us": cpu / len(lat) * 1e6, "4threads_per_s": frames / parallel}


def _installed(name: str) -> bool:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        print(f"{name}: not installed (pip install {name}), skipped")
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--upload-mb", type=int, default=192)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    args = ap.parse_args()
    s3 = s3_server.S3Proxy().start()
    try:
        s3.create_bucket(BUCKET)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "slide.bin"
            with open(source, "wb") as f:
                for _ in range(args.upload_mb):
                    f.write(os.urandom(1 << 20))
            names = [n for n in args.clients.split(",") if _installed(n)]
            for i, name in enumerate(names):  # warm-up round: s3proxy's JIT, the page cache
                measure(name, s3, source, args.frames, seed=i)
            rows = [measure(name, s3, source, args.frames, seed=i) for i, name in enumerate(names)]
        print(f"load average {os.getloadavg()[0]:.1f}; {args.frames} ranged GETs of 10-100 KB; "
              f"{args.upload_mb} MB multipart upload from a file")
        print("| client | ranged GET p50 ms | p99 ms | serial GET/s | client CPU us/GET | 4 threads GET/s | "
              "multipart upload MB/s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['client']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['serial_per_s']:.0f} | "
                  f"{r['cpu_us']:.0f} | {r['4threads_per_s']:.0f} | {r['upload_MBps']:.0f} |")
    finally:
        s3.cleanup()


if __name__ == "__main__":
    main()
