"""The shard stage on real footage: round trip, every bad-input class, the CLI contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bevt_core.config import ConfigError
from bevt_core.data.decode import decode_jpeg, resize_short_side
from bevt_core.data.loader import read_sample
from bevt_core.data.manifest import load_manifest
from bevt_core.stages.shard import ShardConfig, run
from tests.conftest import bevt_cli


def pyav_frames(path: Path) -> list[np.ndarray]:
    """Ground truth, independent of the stage's code path: every frame PyAV decodes."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def link_list(tmp: Path, videos: list[Path]) -> Path:
    root = tmp / "videos"
    root.mkdir()
    lines = []
    for i, v in enumerate(videos):
        name = f"{i:02d}_{v.name}"
        os.symlink(v, root / name)
        lines.append(f"{name} {i % 3}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def test_round_trip_matches_pyav_decode(samples, tmp_path):
    videos = list(samples.source_videos) + list(samples.fallback_videos)
    listing = link_list(tmp_path, videos)
    result = run(
        ShardConfig(
            input=str(listing),
            output=str(tmp_path / "out"),
            frame_interval=3,
            short_side=96,
            samples_per_shard=3,
            workers=2,
            progress=False,
        )
    )
    assert result.rejected == 0, result.summary()
    m = load_manifest(str(tmp_path / "out"))
    assert len(m) == len(videos)
    decoders = set()
    for row in m.rows:
        truth = pyav_frames(listing.parent / row["source"])
        # decord and PyAV may count one frame apart; the kept indices are every 3rd from 0.
        assert abs(row["num_frames"] - len(truth)) <= 1, row["source"]
        assert row["frame_indices"] == list(range(0, row["num_frames"], 3))
        sample = read_sample(m, row)
        assert sample.meta["source"] == row["source"] and sample.label == row["label"]
        assert len(sample.jpegs) == row["frames"] == len(row["frame_indices"])
        for i in (0, len(sample.jpegs) // 2, len(sample.jpegs) - 1):
            idx = min(row["frame_indices"][i], len(truth) - 1)
            got = decode_jpeg(sample.jpegs[i]).astype(np.float32)
            h, w = got.shape[:2]
            assert min(h, w) == min(96, min(truth[idx].shape[:2]))
            # The same resampling as the stage, so what remains is decoding, frame choice and JPEG;
            # the stored frame must also match its own index at least as well as its neighbours.
            err = {
                j: float(np.abs(got - resize_short_side(truth[j], 96)).mean())
                for j in range(max(0, idx - 3), min(len(truth), idx + 4))
            }
            assert err[idx] < 6.0, f"{row['source']} frame {idx}: mean abs error {err[idx]:.2f}"
            assert err[idx] <= min(err.values()) + 0.25, f"{row['source']} frame {idx} is another frame: {err}"
        decoders.add(row["decoder"])
    assert decoders == {"decord", "pyav"}, "the fallback videos must go through PyAV"


def test_output_is_webdataset_compatible(samples, tmp_path):
    import webdataset as wds

    listing = link_list(tmp_path, list(samples.source_videos)[:2])
    run(
        ShardConfig(
            input=str(listing), output=str(tmp_path / "out"), frame_interval=8, short_side=64, progress=False, workers=1
        )
    )
    m = load_manifest(str(tmp_path / "out"))
    got = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == [r["key"] for r in m.rows]
    assert json.loads(got[0]["json"])["source"] == m.rows[0]["source"]
    assert sum(k.endswith(".jpg") for k in got[0]) == m.rows[0]["frames"]


def write_video(path: Path, frames: list[np.ndarray], faststart: bool = False) -> None:
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_bad_inputs(root: Path, good: Path) -> list[tuple[str, str, set[str]]]:
    """(relative path, label, accepted reasons) for every class of bad input, generated."""
    frames = pyav_frames(good)[:40]
    frames = [np.ascontiguousarray(f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2]) for f in frames]
    write_video(root / "faststart.mp4", frames, faststart=True)
    data = (root / "faststart.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) * 6 // 10])
    corrupt = bytearray(data)
    corrupt[32:4096] = os.urandom(4064)
    (root / "corrupt.mp4").write_bytes(bytes(corrupt))
    (root / "cut_before_index.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    write_video(root / "one_frame.mp4", frames[:1])
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 50)
    with wave.open(str(root / "audio_only.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\1" * 8000)
    (root / "a_directory.mp4").mkdir()
    (root / "in a folder").mkdir()
    shutil.copyfile(root / "faststart.mp4", root / "in a folder" / "one frame.mp4")
    os.symlink(root / "nowhere.mp4", root / "dangling.mp4")
    return [
        ("faststart.mp4", "0", {"ok"}),
        ("truncated.mp4", "0", {"truncated"}),
        ("corrupt.mp4", "0", {"undecodable", "truncated"}),
        ("cut_before_index.mp4", "0", {"undecodable"}),
        ("one_frame.mp4", "0", {"too_few_frames"}),
        ("empty.mp4", "0", {"empty"}),
        ("text.mp4", "0", {"not_a_video"}),
        ("audio_only.wav", "0", {"not_a_video"}),
        ("a_directory.mp4", "0", {"directory"}),
        ("dangling.mp4", "0", {"dangling_link"}),
        ("does_not_exist.mp4", "0", {"missing"}),
        ("faststart.mp4", "1", {"duplicate"}),
        ("faststart.mp4 x", "1", {"missing"}),  # the label is the last field: the path is "faststart.mp4 x"
        ("in a folder/one frame.mp4", "1", {"ok"}),  # a path with spaces
        ("neg_label.mp4", "-3", {"bad_label"}),
        ("unknown_class.mp4", "zebra", {"bad_label"}),
        ("outside_classes.mp4", "7", {"bad_label"}),
    ]


def test_every_bad_input_is_recorded_with_its_reason(samples, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    cases = make_bad_inputs(root, samples.source_videos[0])
    real_bad = []
    for i, (path, _) in enumerate(samples.bad_inputs):
        name = f"real_{i}_{path.name}"
        shutil.copyfile(path, root / name)
        real_bad.append(name)
    (root / "classes.txt").write_text("a\nb\nc\n")
    lines = [f"{p} {label}" for p, label, _ in cases] + [f"{n} 0" for n in real_bad]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    result = run(
        ShardConfig(
            input=str(root / "list.txt"),
            classes=str(root / "classes.txt"),
            output=str(tmp_path / "out"),
            samples_per_shard=4,
            workers=2,
            progress=False,
            max_reject_rate=1.0,
        )
    )
    table = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert [r["index"] for r in table] == list(range(len(lines)))
    for row, (path, _, expected) in zip(table, cases):
        got = "ok" if row["status"] == "ok" else row["reason"]
        assert got in expected, f"{path}: {got} ({row['detail']}), expected {expected}"
    # Real degenerate files: what each kind must become. Files decord rejects but PyAV decodes in
    # full (a solid-colour MPEG-PS, an h264 clip with odd frame sizes) are valid videos: kept via PyAV.
    expected_for_kind = {
        "empty": "empty",
        "not_a_video": "not_a_video",
        "one_frame": "too_few_frames",
        "truncated": "undecodable",
        "solid_colour": "ok:pyav",
        "undecodable": "ok:pyav",
    }
    for row, (path, kind) in zip(table[len(cases) :], samples.bad_inputs):
        got = f"ok:{row['decoder']}" if row["status"] == "ok" else row["reason"]
        assert got == expected_for_kind[kind], f"{path.name} ({kind}): {got} {row['detail']}"
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    kept = sum("ok" in expected for _, _, expected in cases)
    assert (
        len(rejects)
        == result.rejected
        == len(table) - kept - sum(expected_for_kind[k].startswith("ok") for _, k in samples.bad_inputs)
    )
    assert all(r["reason"] and r["detail"] for r in rejects)
    assert sum(result.rejects_by_reason.values()) == result.rejected and not result.failed


def test_reject_rate_decides_the_exit_code(samples, tmp_path, cli_env):
    root = tmp_path / "in"
    root.mkdir()
    os.symlink(samples.source_videos[0], root / "good.mp4")
    (root / "list.txt").write_text("good.mp4 0\nmissing.mp4 0\n")
    base = bevt_cli() + [
        "shard",
        "--input",
        str(root / "list.txt"),
        "--short-side",
        "64",
        "--frame-interval",
        "16",
        "--no-progress",
    ]
    failed = subprocess.run(
        base + ["--output", str(tmp_path / "o1"), "--max-reject-rate", "0.4"],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert failed.returncode == 1, failed.stderr
    assert "max_reject_rate" in failed.stderr and "missing" in failed.stdout
    assert (tmp_path / "o1" / "rejects.parquet").exists(), "outputs are kept for inspection"
    passed = subprocess.run(
        base + ["--output", str(tmp_path / "o2"), "--max-reject-rate", "0.5"],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert passed.returncode == 0, passed.stderr


def test_images_from_a_list(samples, tmp_path):
    result = run(
        ShardConfig(
            input=str(samples.images_list),
            root=str(samples.images_root),
            modality="image",
            output=str(tmp_path / "img"),
            short_side=64,
            samples_per_shard=100,
            progress=False,
        )
    )
    assert result.rejected == 0 and result.ok > 0
    m = load_manifest(str(tmp_path / "img"))
    row = m.rows[-1]
    sample = read_sample(m, row)
    img = decode_jpeg(sample.jpegs[0])
    truth = np.asarray(Image.open(samples.images_root / row["source"]).convert("RGB"))
    assert img.shape[:2] == (row["stored_height"], row["stored_width"])
    assert min(img.shape[:2]) == min(64, min(truth.shape[:2]))
    assert sample.label == row["label"]


def test_list_lines_take_the_last_field_as_the_label(tmp_path):
    from bevt_core.data.inputs import read_inputs

    listing = tmp_path / "list.txt"
    listing.write_text("dir/one frame.mp4 1\nplain.mp4,0\nphotos/my cat.jpg\nclips/a b.avi -1\n")
    items, classes = read_inputs(str(listing))
    assert [(i.source, i.label, i.problem) for i in items] == [
        ("dir/one frame.mp4", 1, ""),
        ("plain.mp4", 0, ""),
        ("photos/my cat.jpg", -1, ""),
        ("clips/a b.avi", -1, ""),
    ]
    assert classes == ["0", "1"]


def test_class_folder_input(samples, tmp_path):
    for cls, video in (("cat", samples.source_videos[0]), ("dog", samples.source_videos[1])):
        (tmp_path / "in" / cls).mkdir(parents=True)
        os.symlink(video, tmp_path / "in" / cls / video.name)
    run(
        ShardConfig(
            input=str(tmp_path / "in"), output=str(tmp_path / "out"), frame_interval=16, short_side=64, progress=False
        )
    )
    m = load_manifest(str(tmp_path / "out"))
    assert m.classes == ["cat", "dog"] and [r["label"] for r in m.rows] == [0, 1]


def test_ssv2_json_input(samples, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    os.symlink(samples.source_videos[0], root / "101.webm")
    (root / "train.json").write_text(json.dumps([{"id": "101", "template": "Pushing [something] left"}]))
    (root / "labels.json").write_text(json.dumps({"Pushing something left": 0, "Other": 1}))
    run(
        ShardConfig(
            input=str(root / "train.json"),
            classes=str(root / "labels.json"),
            output=str(tmp_path / "out"),
            frame_interval=16,
            short_side=64,
            progress=False,
        )
    )
    m = load_manifest(str(tmp_path / "out"))
    assert m.rows[0]["source"] == "101.webm" and m.rows[0]["label"] == 0


def test_changed_settings_on_the_same_output_are_refused(samples, tmp_path):
    listing = link_list(tmp_path, list(samples.source_videos)[:1])
    cfg = dict(input=str(listing), output=str(tmp_path / "out"), frame_interval=16, short_side=64, progress=False)
    run(ShardConfig(**cfg))
    with pytest.raises(ConfigError, match="^short_side:"):
        run(ShardConfig(**{**cfg, "short_side": 32}))


def test_cli_help_documents_every_option():
    from dataclasses import fields

    out = subprocess.run(bevt_cli() + ["shard", "--help"], capture_output=True, text=True, check=True).stdout
    for f in fields(ShardConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "--print-config" in out and "--config" in out


def test_cli_bad_value_fails_before_any_work(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run(
        bevt_cli() + ["shard", "--input", "x.txt", "--output", str(out), "--jpeg-quality", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bevt shard: error: jpeg_quality:")
    assert not out.exists()
    missing = subprocess.run(
        bevt_cli() + ["shard", "--input", str(tmp_path / "nope.txt"), "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "input:" in missing.stderr and not out.exists()


def test_print_config_is_loadable_yaml(tmp_path):
    proc = subprocess.run(
        bevt_cli() + ["shard", "--input", "a.txt", "--output", "o", "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / "c.yaml").write_text(proc.stdout)
    again = subprocess.run(
        bevt_cli() + ["shard", "--config", str(tmp_path / "c.yaml"), "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout == proc.stdout and "frame_interval: 1" in proc.stdout
