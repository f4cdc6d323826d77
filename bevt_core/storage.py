"""One way to read and write bytes, whether the location is a local path or ``s3://bucket/key``.

Every write is atomic: a reader sees the old object, or the complete new one, never a prefix.
Locally that is a temporary file in the same directory plus ``os.replace``; on S3 it is a single
PUT or a multipart upload, which only becomes visible once completed. The S3 endpoint and
credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), which boto3 reads by itself.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

S3_SCHEME = "s3://"
# Objects above this size go up in parts of this size: a killed upload leaves no visible object.
MULTIPART_CHUNK = 16 * 1024 * 1024

_client = None
_client_pid = None


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = str(uri)[len(S3_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3 URI with a bucket: {uri!r}")
    return bucket, key


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an s3 prefix."""
    base = str(base)
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out = f"{out}/{str(p).strip('/')}"
        return out
    return str(Path(base, *parts))


def s3_client():
    """A boto3 client per process (clients are not safe to share across fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import boto3
        from botocore.config import Config

        # A fresh session, not boto3's default one, which keeps the credentials it first resolved.
        _client = boto3.session.Session().client(
            "s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"})
        )
        _client_pid = os.getpid()
    return _client


def exists(uri: str | os.PathLike) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(str(uri))
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            if code not in ("403", "Forbidden"):
                raise
        # A refused HEAD has no body to say why; a GET's error names the cause (bad signature, unknown key).
        s3_client().get_object(Bucket=bucket, Key=key, Range="bytes=0-0")
        return True
    return Path(uri).exists()


def read_bytes(uri: str | os.PathLike) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()


def read_range(uri: str | os.PathLike, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of an object: one ranged GET on S3, a seek locally."""
    if end <= start:
        return b""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        body = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
        return body.read()
    with open(uri, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def open_read(uri: str | os.PathLike, start: int = 0) -> BinaryIO:
    """A sequential reader from byte ``start`` to the end, streamed (not buffered whole) on S3."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        kwargs = {"Range": f"bytes={start}-"} if start else {}
        return s3_client().get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
    f = open(uri, "rb")  # noqa: SIM115 -- the caller reads and closes it
    f.seek(start)
    return f


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Atomically replace the object at ``uri`` with ``data``."""
    if is_s3(uri):
        upload_fileobj(io.BytesIO(data), str(uri))
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def upload_fileobj(fileobj: BinaryIO, uri: str) -> None:
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(uri)
    cfg = TransferConfig(multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK, use_threads=False)
    s3_client().upload_fileobj(fileobj, bucket, key, Config=cfg)


def put_file(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Atomically place a finished local file at ``uri`` (a move when both are local)."""
    if is_s3(uri):
        with open(local_path, "rb") as f:
            upload_fileobj(f, str(uri))
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def delete(uri: str | os.PathLike) -> None:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)


def make_local_dirs(uri: str | os.PathLike) -> None:
    """Create a local output directory; S3 prefixes need nothing."""
    if not is_s3(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


def reset_s3_client() -> None:
    """Forget the cached client, e.g. after the AWS environment changed."""
    global _client
    _client = None
