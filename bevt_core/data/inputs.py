"""Read what a stage is asked to shard: annotation lists, SSv2-style JSON, or class folders.

Every input line becomes an :class:`InputItem` in input order, including malformed ones: a line
that cannot be parsed still becomes an item (with ``problem`` set) so that it lands in
``rejects.parquet`` instead of vanishing.

Accepted forms:
- K400 / Diving48 lists (``.txt``, ``.csv``, anything not JSON): ``relative/path label`` per line,
  whitespace or comma separated; ``label`` is the last field (so a path may contain spaces), a class
  index or a class name. A line with only a path (its last field is a file name with a media
  extension), or with label -1, is unlabelled (label -1), as image-pretraining lists are.
- SSv2-style JSON: a list of objects with ``id`` (the file is ``<id><video_ext>``) and ``label``
  or ``template`` (brackets removed, as the SSv2 label file spells classes).
- A local folder holding one subfolder per class (class names sorted, indices from 0).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bevt_core import storage

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".ogv", ".m4v", ".flv", ".wmv", ".3gp")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def source_root(input: str, root: str) -> str:
    """Where the relative paths of ``input`` resolve: ``root`` if given, else the list's folder (or the
    class-folder input itself)."""
    return root or (os.path.dirname(input) if not Path(input).is_dir() else input)


@dataclass(frozen=True)
class InputItem:
    index: int  # position in the input, which fixes the shard it goes to
    source: str  # path relative to the root (or absolute)
    label: int  # class index, -1 when unlabelled
    raw_label: str  # the label as written, for rejects
    problem: str = ""  # non-empty: the line is malformed (becomes a bad_label reject)


def read_classes(uri: str) -> list[str]:
    """Class names in index order from a JSON list, a JSON {name: index} map, or one name per line."""
    text = storage.read_bytes(uri).decode("utf-8")
    if uri.endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            names = sorted(data, key=lambda k: int(data[k]))
            if [int(data[n]) for n in names] != list(range(len(names))):
                raise ValueError(f"{uri}: class indices must be 0..{len(names) - 1} without gaps")
            return names
        return [str(n) for n in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _ssv2_name(text: str) -> str:
    return re.sub(r"[\[\]]", "", text).strip()


def _parse_label(raw: str, class_index: dict[str, int] | None) -> tuple[int, str]:
    """Returns (label, problem). Integers are indices; anything else must name a known class."""
    if raw == "":
        return -1, ""
    if re.fullmatch(r"-?\d+", raw):
        value = int(raw)
        if value == -1:  # the usual spelling of "unlabelled" in image-pretraining lists
            return -1, ""
        if value < 0:
            return -1, f"negative label {value}"
        if class_index is not None and value >= len(class_index):
            return -1, f"label {value} is outside the {len(class_index)} classes"
        return value, ""
    if class_index is None:
        return -1, f"class name {raw!r} but no class list (give --classes)"
    if raw not in class_index:
        return -1, f"unknown class {raw!r}"
    return class_index[raw], ""


_PATH_AND_LABEL = re.compile(r"^(?P<path>.*?\S)[\s,]+(?P<label>[^\s,]+)$")


def _split_line(line: str) -> tuple[str, str]:
    """(path, raw label) of one list line. The label is the last field, so a path may hold spaces; a line
    whose last field is itself a media file name is a path alone (an unlabelled image or video)."""
    match = _PATH_AND_LABEL.match(line)
    if match is None or match["label"].lower().endswith(VIDEO_EXTS + IMAGE_EXTS):
        return line, ""
    return match["path"], match["label"]


def _read_list_lines(text: str) -> list[tuple[str, str, str]]:
    """(path, raw label, problem) for each non-empty, non-comment line."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((*_split_line(line), ""))
    return out


def read_inputs(
    input_uri: str, classes_uri: str = "", video_ext: str = ".webm", exts: tuple[str, ...] = VIDEO_EXTS
) -> tuple[list[InputItem], list[str]]:
    """All input items in order, and the class names (index order)."""
    names = read_classes(classes_uri) if classes_uri else None
    if not storage.is_s3(input_uri) and Path(input_uri).is_dir():
        return _read_folder(Path(input_uri), names, exts)
    try:
        text = storage.read_bytes(input_uri).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"input list not found: {input_uri}") from None
    if input_uri.endswith(".json"):
        rows = []
        for i, obj in enumerate(json.loads(text)):
            if not isinstance(obj, dict) or "id" not in obj:
                rows.append((f"<entry {i}>", str(obj)[:80], "entry has no 'id'"))
                continue
            raw = obj.get("label", obj.get("template", ""))
            rows.append((f"{obj['id']}{video_ext}", _ssv2_name(str(raw)), ""))
    else:
        rows = _read_list_lines(text)
    if names is None:
        names = _infer_class_names([raw for _, raw, problem in rows if not problem])
    class_index = {n: i for i, n in enumerate(names)} if names else None
    items = []
    for i, (path, raw, problem) in enumerate(rows):
        label, label_problem = (-1, "") if problem else _parse_label(raw, class_index)
        items.append(InputItem(i, path, label, raw, problem or label_problem))
    return items, names


def _infer_class_names(raw_labels: list[str]) -> list[str]:
    """Without a class file: integer labels name themselves ("0".."max"); names are sorted."""
    present = [r for r in raw_labels if r != ""]
    if not present:
        return []
    if all(re.fullmatch(r"-?\d+", r) for r in present):
        top = max(int(r) for r in present)
        return [str(i) for i in range(top + 1)] if top >= 0 else []
    return sorted({r for r in present if not re.fullmatch(r"-?\d+", r)})


def _read_folder(root: Path, names: list[str] | None, exts: tuple[str, ...]):
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"input folder {root} has no class subfolders")
    names = names or folders
    class_index = {n: i for i, n in enumerate(names)}
    items = []
    for folder in folders:
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() not in exts and not path.is_dir():
                continue
            label, problem = (class_index[folder], "") if folder in class_index else (-1, f"unknown class {folder!r}")
            items.append(InputItem(len(items), f"{folder}/{path.name}", label, folder, problem))
    return items, names
