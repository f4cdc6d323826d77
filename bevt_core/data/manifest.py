"""The manifest: what exists in a shard directory, the only way later stages discover data.

``manifest.parquet`` has one row per input item (status ``ok`` or ``rejected``), in input order;
``rejects.parquet`` repeats the rejected ones with their reason; ``classes.json`` maps class
names to indices. While a stage runs, each finished shard's rows sit in ``_parts/`` and the
manifest is written last, so its presence means the whole directory is complete.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from bevt_core import storage

MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
CLASSES = "classes.json"

SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # position in the input list
        ("key", pa.string()),
        ("shard", pa.string()),  # tar file name inside the directory; null when rejected
        ("offset", pa.int64()),  # byte offset of the sample's first tar member
        ("bytes", pa.int64()),  # byte length of the sample's members
        ("source", pa.string()),
        ("label", pa.int64()),
        ("raw_label", pa.string()),
        ("frames", pa.int32()),  # stored (kept) frames; 1 for an image
        ("frame_indices", pa.list_(pa.int32())),  # original index of each kept frame
        ("num_frames", pa.int32()),  # frames in the source video
        ("fps", pa.float32()),
        ("width", pa.int32()),  # source size
        ("height", pa.int32()),
        ("stored_width", pa.int32()),
        ("stored_height", pa.int32()),
        ("decoder", pa.string()),
        ("status", pa.string()),  # "ok" | "rejected"
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
REJECT_COLUMNS = ["index", "source", "raw_label", "reason", "detail"]


def rows_to_parquet(rows: list[dict], schema: pa.Schema = SCHEMA) -> bytes:
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_table(uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


@dataclass
class Manifest:
    """The ``ok`` rows of a shard directory, plus its class names."""

    root: str
    rows: list[dict]
    classes: list[str]

    def shard_uri(self, row: dict) -> str:
        return storage.join(self.root, row["shard"])

    def __len__(self) -> int:
        return len(self.rows)


def load_manifest(root: str) -> Manifest:
    uri = storage.join(root, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"no {MANIFEST} in {root}: not a shard directory, or the stage that writes it "
            "has not finished (rerun it to resume)"
        )
    rows = [r for r in read_table(uri).to_pylist() if r["status"] == "ok"]
    classes_map = json.loads(storage.read_bytes(storage.join(root, CLASSES)))
    classes = sorted(classes_map, key=classes_map.get)
    return Manifest(root, rows, classes)


def write_final(root: str, rows: list[dict], classes: list[str]) -> None:
    """Write rejects, classes, then the manifest (last: it marks the directory complete)."""
    rejects = [r for r in rows if r["status"] == "rejected"]
    reject_schema = pa.schema([SCHEMA.field(c) for c in REJECT_COLUMNS])
    storage.write_bytes(storage.join(root, REJECTS), rows_to_parquet(rejects, reject_schema))
    storage.write_bytes(
        storage.join(root, CLASSES), json.dumps({n: i for i, n in enumerate(classes)}, indent=1).encode()
    )
    storage.write_bytes(storage.join(root, MANIFEST), rows_to_parquet(rows))
