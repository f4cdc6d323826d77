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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

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
    """Writes samples (runs of members sharing a key) to a tar file object, recording where each lands."""

    def __init__(self, fileobj: BinaryIO):
        # Open for the writer's life; close() ends it.
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def write(self, key: str, members: list[tuple[str, bytes]]) -> tuple[int, int]:
        """Append ``<key>.<ext>`` for each (ext, data); returns the sample's (offset, bytes) in the tar."""
        start = self._tar.offset
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mode = 0o444
            info.mtime = 0
            self._tar.addfile(info, io.BytesIO(data))
        return start, self._tar.offset - start

    def close(self) -> None:
        self._tar.close()


def sample_members(sample: Sample, is_video: bool) -> list[tuple[str, bytes]]:
    members = [("json", json.dumps(sample.meta, sort_keys=True).encode()), ("cls", str(sample.label).encode())]
    if is_video:
        return members + [(f"{i:04d}.jpg", jpeg) for i, jpeg in enumerate(sample.jpegs)]
    return members + [("jpg", sample.jpegs[0])]


def _members(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the USTAR members in ``buf`` (whole members only; stops at the end marker)."""
    pos = 0
    while pos + BLOCK <= len(buf):
        header = buf[pos : pos + BLOCK]
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
        yield name, buf[start : start + size]
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK


def read_members(buf: bytes) -> tuple[str, dict[str, bytes]]:
    """The key and {ext: data} of the one sample whose byte range is ``buf``."""
    key, members = None, {}
    for name, data in _members(buf):
        base, _, ext = name.partition(".")
        if key is None:
            key = base
        elif base != key:
            raise ValueError(f"byte range holds two samples: {key!r} and {base!r}")
        members[ext] = data
    if key is None:
        raise ValueError("empty byte range")
    return key, members


def parse_sample(buf: bytes) -> Sample:
    """Rebuild one data sample (frames in order) from its byte range in a shard."""
    key, members = read_members(buf)
    frames = sorted(
        (ext for ext in members if ext.endswith("jpg")), key=lambda e: int(e.split(".")[0] or 0) if e != "jpg" else 0
    )
    return Sample(
        key, int(members.get("cls", b"-1")), json.loads(members.get("json", b"{}")), [members[f] for f in frames]
    )
