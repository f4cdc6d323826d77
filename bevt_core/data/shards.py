"""The shard format: plain WebDataset tars whose byte layout the manifest records.

A sample is a run of consecutive tar members sharing one key: ``<key>.json`` (metadata),
``<key>.cls`` (class index as text) and either ``<key>.jpg`` (an image) or ``<key>.NNNN.jpg``
(video frame NNNN of the kept frames, each its own JPEG so a clip can be read without decoding
the rest). Tars are written in USTAR format with fixed owner and mtime, so the same input gives
byte-identical shards, and each sample's ``offset``/``bytes`` in the tar go to the manifest:
readers fetch exactly one sample's byte range (a seek, or one ranged GET on S3).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

BLOCK = 512
SHARD_PATTERN = "{prefix}-{index:06d}.tar"


def shard_name(prefix: str, index: int) -> str:
    return SHARD_PATTERN.format(prefix=prefix, index=index)


@dataclass
class Sample:
    key: str
    label: int
    meta: dict
    jpegs: list[bytes] = field(default_factory=list)  # one per kept frame (one for an image)


class ShardWriter:
    """Writes samples to a tar file object, recording where each one lands."""

    def __init__(self, fileobj: BinaryIO):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        info.mtime = 0
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample, is_video: bool) -> tuple[int, int]:
        """Append one sample; returns its (offset, bytes) in the tar."""
        start = self._tar.offset
        self._add(f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode())
        self._add(f"{sample.key}.cls", str(sample.label).encode())
        if is_video:
            for i, jpeg in enumerate(sample.jpegs):
                self._add(f"{sample.key}.{i:04d}.jpg", jpeg)
        else:
            self._add(f"{sample.key}.jpg", sample.jpegs[0])
        return start, self._tar.offset - start

    def close(self) -> None:
        self._tar.close()


def _members(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the USTAR members in ``buf`` (whole members only; stops at the end marker)."""
    pos = 0
    while pos + BLOCK <= len(buf):
        header = buf[pos:pos + BLOCK]
        if header == b"\0" * BLOCK:
            return
        name = header[0:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        if prefix:
            name = f"{prefix}/{name}"
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        start = pos + BLOCK
        if start + size > len(buf):
            raise ValueError(f"tar member {name!r} runs past the sample's byte range")
        yield name, buf[start:start + size]
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK


def parse_sample(buf: bytes) -> Sample:
    """Rebuild one sample from its byte range in a shard."""
    key, meta, label, frames = None, {}, -1, {}
    for name, data in _members(buf):
        base, _, ext = name.partition(".")
        if key is None:
            key = base
        elif base != key:
            raise ValueError(f"byte range holds two samples: {key!r} and {base!r}")
        if ext == "json":
            meta = json.loads(data)
        elif ext == "cls":
            label = int(data)
        elif ext == "jpg":
            frames[0] = data
        elif ext.endswith(".jpg"):
            frames[int(ext.split(".")[0])] = data
    if key is None:
        raise ValueError("empty byte range")
    return Sample(key, label, meta, [frames[i] for i in sorted(frames)])
