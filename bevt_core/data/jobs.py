"""The machinery every shard-producing stage shares: plan, skip what is done, write atomically.

A stage splits its work into numbered tasks, each producing one tar and one part file
(``_parts/<name>.parquet``, its rows of the final manifest). A task is done exactly when its
part file exists, and the part file is written only after the tar is in place, so a stage killed
at any moment is resumed by rerunning it: finished tasks are skipped, half-written tars are
invisible temporaries (locally) or uncompleted multipart uploads (S3), and the directory's
manifest, written last, is what marks the whole output complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bevt_core import storage
from bevt_core.config import ConfigError

PARTS = "_parts"


def part_uri(output: str, name: str) -> str:
    """Where task ``name``'s rows go (``name`` is the tar's name without ``.tar``)."""
    return storage.join(output, PARTS, f"{name}.parquet")


def check_same_settings(output: str, settings: dict) -> None:
    """Refuse to mix outputs made with different settings in one directory; record them otherwise."""
    uri = storage.join(output, PARTS, "settings.json")
    if storage.exists(uri):
        earlier = json.loads(storage.read_bytes(uri))
        changed = [k for k in settings if earlier.get(k) != settings[k]]
        if changed:
            raise ConfigError(
                f"{changed[0]}: {output} already holds outputs made with "
                f"{changed[0]}={earlier.get(changed[0])!r}; use another --output or delete it"
            )
        return
    storage.write_bytes(uri, json.dumps(settings, indent=1, sort_keys=True).encode())


def recorded_settings(output: str) -> dict:
    """The settings :func:`check_same_settings` recorded for ``output``."""
    uri = storage.join(output, PARTS, "settings.json")
    if not storage.exists(uri):
        raise ConfigError(f"{output} records no settings ({PARTS}/settings.json): not written by a bevt stage")
    return json.loads(storage.read_bytes(uri))


def clean_leftovers(output: str) -> None:
    """Remove temporaries of a killed run; on S3 abort its unfinished multipart uploads."""
    if storage.is_s3(output):
        bucket, key = storage.split_s3(output)
        client = storage.s3_client()
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=key.rstrip("/") + "/").get("Uploads", [])
        for up in uploads:
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        return
    for tmp in Path(output).glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_tar(output: str, name: str) -> Iterator[Any]:
    """A file to write tar ``name`` into; it appears at ``output/name`` only if the block succeeds.

    Set ``handle.keep = False`` inside the block to discard the file (e.g. it holds no sample).
    """
    local_dir = None if storage.is_s3(output) else Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=local_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.keep = True  # type: ignore[attr-defined]
            yield f
            f.flush()
            os.fsync(f.fileno())
            keep = f.keep  # type: ignore[attr-defined]
        if keep:
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; shards are meant to be shared
            if local_dir is None:
                storage.put_file(tmp, storage.join(output, name))
            else:
                os.replace(tmp, local_dir / name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def run_parallel(
    tasks: Sequence[Any],
    fn: Callable[[Any], Any],
    workers: int,
    progress: bool,
    desc: str,
    weight: Callable[[Any], int] = lambda t: 1,
    postfix: Callable[[list], dict] | None = None,
    init: Callable[[], None] | None = None,
    unit: str = "item",
) -> list:
    """``fn(task)`` for every task, across ``workers`` processes, with a progress bar weighted by
    ``weight(task)``; results come back in task order."""
    bar = tqdm(
        total=sum(weight(t) for t in tasks),
        desc=desc,
        unit=unit,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    results: dict[int, Any] = {}

    def done(i: int, result: Any) -> None:
        results[i] = result
        bar.update(weight(tasks[i]))
        if postfix:
            bar.set_postfix(postfix(list(results.values())))

    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for i, t in enumerate(tasks):
                done(i, fn(t))
        else:
            # spawn, not fork: a parent with live OpenCV/decoder thread pools deadlocks its forked children.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=init) as pool:
                futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
                for fut in as_completed(futures):
                    done(futures[fut], fut.result())
    return [results[i] for i in range(len(tasks))]
