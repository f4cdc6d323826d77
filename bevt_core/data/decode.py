"""Decode videos and images into RGB uint8 arrays, classifying every failure.

decord is tried first (fast seeking, as in the official pipeline); PyAV decodes what decord
cannot (theora, MPEG-1 streams without a duration, ...). A failure of both is a
:class:`RejectedInput` whose ``reason`` is one of :data:`REASONS`: the shard stage records it in
``rejects.parquet`` and goes on.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Every reason an input can be rejected for, with what it means (shown in the stage summary).
REASONS = {
    "missing": "the file does not exist",
    "dangling_link": "a symbolic link whose target does not exist",
    "directory": "a directory where a file was expected",
    "empty": "a file of 0 bytes",
    "unreadable": "the file could not be read (permissions, I/O error)",
    "bad_label": "the annotation line or label is malformed or unknown",
    "duplicate": "the same source appears twice in the input list",
    "not_a_video": "neither decoder recognises the file as a video container with a video stream",
    "not_an_image": "the file is not a decodable image",
    "undecodable": "the container opens but no frame can be decoded by decord or PyAV",
    "truncated": "decoding stops early: the file is cut short or corrupt mid-stream",
    "too_few_frames": "fewer decodable frames than the configured minimum",
}


class RejectedInput(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, the kept frames only
    indices: list[int]  # original frame index of each kept frame
    num_frames: int  # frames in the video (as decoded)
    fps: float
    width: int
    height: int
    decoder: str  # "decord" or "pyav"


def check_file(path: Path) -> None:
    """Reject paths that are not regular, non-empty, readable files, before any decoder sees them."""
    if path.is_symlink() and not path.exists():
        raise RejectedInput("dangling_link", f"{path} -> {os.readlink(path)}")
    if not path.exists():
        raise RejectedInput("missing", str(path))
    if path.is_dir():
        raise RejectedInput("directory", str(path))
    if path.stat().st_size == 0:
        raise RejectedInput("empty", str(path))
    if not os.access(path, os.R_OK):
        raise RejectedInput("unreadable", str(path))


def kept_indices(num_frames: int, frame_interval: int, max_frames: int) -> list[int]:
    """Every ``frame_interval``-th frame from 0, at most ``max_frames`` of them (0 = no cap)."""
    idx = list(range(0, num_frames, frame_interval))
    return idx[:max_frames] if max_frames > 0 else idx


@contextlib.contextmanager
def _native_stderr_silenced():
    """decord's C++ code logs every failure straight to fd 2; the reason goes to rejects.parquet instead."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _decode_decord(source: Path | bytes, frame_interval: int, max_frames: int) -> DecodedVideo:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    src = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with _native_stderr_silenced():
        vr = decord.VideoReader(src, num_threads=1)
        n = len(vr)
        if n == 0:
            raise RuntimeError("decord reports 0 frames")
        idx = kept_indices(n, frame_interval, max_frames)
        frames = vr.get_batch(idx).asnumpy()
    h, w = frames.shape[1:3]
    return DecodedVideo(frames, idx, n, float(vr.get_avg_fps() or 0.0), w, h, "decord")


# Leading bytes of video containers: a file that starts like one but will not open is a damaged
# video (cut short before its index, corrupt header), not some other kind of file.
_CONTAINER_MAGIC = (
    (4, b"ftyp"),
    (0, b"RIFF"),
    (0, b"\x1a\x45\xdf\xa3"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),
    (0, b"\x00\x00\x01\xb3"),
    (0, b"FLV"),
    (0, b"\x30\x26\xb2\x75"),
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
)


def looks_like_video(head: bytes) -> bool:
    return any(head[at : at + len(magic)] == magic for at, magic in _CONTAINER_MAGIC)


def _head(source: Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:192]
    with open(source, "rb") as f:
        return f.read(192)


def _decode_pyav(source: Path | bytes, frame_interval: int, max_frames: int) -> DecodedVideo:
    import av

    src = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        container = av.open(src)
    except Exception as e:  # noqa: BLE001 -- every PyAV open failure means the same to us
        if looks_like_video(_head(source)):
            raise RejectedInput(
                "undecodable", f"a video container that will not open (cut short or corrupt): {e}"
            ) from None
        raise RejectedInput("not_a_video", f"PyAV cannot open it: {e}") from None
    with container:
        if not container.streams.video:
            raise RejectedInput("not_a_video", "the container has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = int(stream.frames or 0)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        frames, idx, n, error = [], [], 0, None
        try:
            for frame in container.decode(stream):
                if n % frame_interval == 0 and (max_frames <= 0 or len(frames) < max_frames):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    idx.append(n)
                n += 1
        except Exception as e:  # noqa: BLE001 -- a decode error mid-stream is what "truncated" means
            error = e
    if n == 0:
        raise RejectedInput("undecodable", f"no frame decodes: {error or 'empty stream'}")
    if error is not None:
        raise RejectedInput("truncated", f"decoding failed after {n} frames: {error}")
    if declared > 1 and n < declared - 1:
        # PyAV and decord may disagree by one frame; more than that is a cut-short file.
        raise RejectedInput("truncated", f"decoded {n} of {declared} declared frames")
    arr = np.stack(frames)
    return DecodedVideo(arr, idx, n, fps, arr.shape[2], arr.shape[1], "pyav")


# MPEG program/elementary/transport streams carry no frame index: decord's seeks there land on
# frames far from the ones asked for (seconds away on MPEG-2 footage), so those go
# straight to PyAV, which decodes sequentially.
def _indexless(head: bytes) -> bool:
    ts = len(head) > 188 and head[0] == head[188] == 0x47  # 188-byte transport packets
    return ts or head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"))


def decode_video(
    source: Path | bytes, frame_interval: int = 1, max_frames: int = 0, min_frames: int = 2
) -> DecodedVideo:
    """Decode the kept frames of a video; raises :class:`RejectedInput` with the reason."""
    head = _head(source)
    try:
        if _indexless(head):
            raise RuntimeError("index-less MPEG stream: decoded sequentially with PyAV")
        video = _decode_decord(source, frame_interval, max_frames)
    except Exception as decord_error:  # noqa: BLE001 -- decord raises bare DECORDError/RuntimeError
        try:
            video = _decode_pyav(source, frame_interval, max_frames)
        except RejectedInput as e:
            raise RejectedInput(e.reason, f"{e.detail}; decord: {_first_line(decord_error)}") from None
    if video.num_frames < min_frames:
        raise RejectedInput("too_few_frames", f"{video.num_frames} frame(s), minimum {min_frames}")
    return video


def decode_image(source: Path | bytes) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array; grayscale and alpha images are converted."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RejectedInput("not_an_image", "no image decoder recognises the bytes")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Cap the short side at ``short_side``; never upscales; 0 keeps the size.

    An integer-factor box filter (OpenCV's fast path for INTER_AREA) takes the image to within 2x
    of the target, then bilinear finishes: within ~1 grey level of a pure area resample at a
    quarter of its cost, which otherwise rivals the cost of decoding the frame.
    """
    h, w = frames.shape[-3:-1]
    if short_side <= 0 or min(h, w) <= short_side:
        return frames
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    k = min(h, w) // short_side

    def one(frame: np.ndarray) -> np.ndarray:
        if k >= 2:
            frame = cv2.resize(frame, (w // k, h // k), interpolation=cv2.INTER_AREA)
        return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)

    return one(frames) if frames.ndim == 3 else np.stack([one(f) for f in frames])


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("corrupt JPEG in shard")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
