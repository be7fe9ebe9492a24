"""Multipart uploads left open in the bucket: what a node killed in the middle of
``S3Storage.commit`` leaves behind.

No object exists until an upload completes, so readers never see them, but their parts
are kept (and billed) until the upload is aborted. ``slidearchive verify`` lists the
uploads under the archive's prefix started more than ``--stale-uploads-after`` minutes
ago (a younger one may be a live node's upload in progress) and ``verify --repair``
aborts them. A bucket lifecycle rule (AbortIncompleteMultipartUpload) does the same on
the bucket's own schedule. obstore, the archive's client, cannot list uploads; botocore
can, and is used for this maintenance only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import datetime, timedelta, timezone
from typing import Iterator


@dataclasses.dataclass(frozen=True)
class OpenUpload:
    key: str
    upload_id: str
    initiated: datetime

    @property
    def storage_id(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _client(storage):
    """A botocore S3 client from the same AWS_* environment the archive's client reads."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(s3={"addressing_style": "path"}, connect_timeout=min(5.0, storage.timeout),
                    read_timeout=storage.timeout, retries={"max_attempts": 3},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=endpoint, config=config,
                        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


@contextlib.contextmanager
def _calling(storage, what: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    from archive.errors import StorageUnavailable

    try:
        yield
    except (BotoCoreError, ClientError) as e:
        raise StorageUnavailable(f"object storage unavailable ({what}: {type(e).__name__}); retry later") from None


def open_uploads(storage) -> list[OpenUpload]:
    """Every multipart upload not completed nor aborted under the archive's prefix, oldest first."""
    client = _client(storage)
    prefix = f"{storage.prefix}/" if storage.prefix else ""
    found: list[OpenUpload] = []
    with _calling(storage, "list uploads"):
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=storage.bucket, Prefix=prefix):
            for u in page.get("Uploads", []):
                found.append(OpenUpload(u["Key"], u["UploadId"], u["Initiated"].astimezone(timezone.utc)))
    return sorted(found, key=lambda u: u.initiated)


def stale(uploads: list[OpenUpload], minutes: float, now: datetime | None = None) -> list[OpenUpload]:
    """Those started more than ``minutes`` ago (no live node takes that long over one instance)."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(minutes=minutes)
    return [u for u in uploads if u.initiated <= cutoff]


def abort(storage, uploads: list[OpenUpload]) -> int:
    """Abort ``uploads`` (their parts are deleted); one already gone counts as done."""
    from botocore.exceptions import ClientError

    client = _client(storage)
    with _calling(storage, "abort upload"):
        for u in uploads:
            try:
                client.abort_multipart_upload(Bucket=storage.bucket, Key=u.key, UploadId=u.upload_id)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
    return len(uploads)
