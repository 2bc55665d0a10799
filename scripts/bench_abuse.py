#!/usr/bin/env python3
"""Abuse benchmark (issue 13 items 2-4): each figure before and after the protection, in the same run.

camera: a real kiosk in its own process (bundled model, sample catalog, the demo clip
looped at its own 10 fps as a camera would deliver it) behind its real web server; its
recognition rate (frames_recognised from /health) alone, then while 200 client threads
in another process post a small JPEG to /search as fast as they get answers. Rows:
"before", the previous release (tree of commit adb4c92 via `git archive`: werkzeug's
threaded server, a plain pipeline lock); "protection_off", this tree with search_slots
far above 200 and Kiosk(camera_first=False); the same with 16 server threads, with and
without the camera priority (what the priority alone is worth once more searches reach
the pipeline than it can serve); "after", this tree's defaults (waitress with 4 threads,
4 search slots and 429 + Retry-After beyond, the camera first).

slow_client: how long a client that sent half a request keeps its connection open,
up to --cap-s. before: the previous release's werkzeug server (its /search route, a stub kiosk: the request never reaches
it); after: this tree's WebServer with its default connection timeout.

bombs: four 13000x13000 PNGs decoded at once in a fresh interpreter each: growth
of peak RSS (ru_maxrss) and wall time. before: decode_rgb of the previous release;
after: BoundedDecoder with the kiosk's defaults.

    python scripts/bench_abuse.py --out docs/benchmarks/abuse.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import write_report  # noqa: E402

from shelfsight.edge_app.camera import VideoFileSource  # noqa: E402
from shelfsight.edge_app.demo.samples import generate_clip, generate_sample_set  # noqa: E402
from shelfsight.edge_app.kiosk.sources import resolve_model  # noqa: E402
from shelfsight.edge_app.kiosk.teaching import encode_jpeg  # noqa: E402
from shelfsight.edge_app.web.app import WebServer, create_app  # noqa: E402
from tests.edge_app.test_abuse import png_bomb  # noqa: E402

log = logging.getLogger("bench_abuse")

REPO = Path(__file__).resolve().parents[1]
PREVIOUS_RELEASE = "adb4c92"
CLIENTS = 200


def previous_release(workdir: Path) -> Path:
    """The previous release's tree as an importable `shelfsight` package; its path for PYTHONPATH."""
    tree, package = workdir / f"tree-{PREVIOUS_RELEASE}", workdir / f"pkg-{PREVIOUS_RELEASE}"
    if not tree.is_dir():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", PREVIOUS_RELEASE], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    (package / "shelfsight").mkdir(parents=True, exist_ok=True)
    (package / "shelfsight" / "__init__.py").touch()
    for part in ("catalog", "edge_app", "train", "convert"):
        link = package / "shelfsight" / part
        if not link.exists():
            link.symlink_to(tree / part)
    return package


# The 200 clients live in their own process: in the kiosk's process their threads would compete with
# the camera worker for the interpreter lock, measuring Python's scheduler instead of the kiosk.
CLIENTS_PROCESS = """
import http.client, json, sys, threading, time
host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
photo = open(sys.argv[5], "rb").read()
stop = threading.Event()
tallies = [{} for _ in range(n)]
def client(counts):
    while not stop.is_set():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.request("POST", "/search", body=photo, headers={"Content-Type": "image/jpeg"})
            status = str(conn.getresponse().status)
        except OSError:
            status = "connection error"
        finally:
            conn.close()
        counts[status] = counts.get(status, 0) + 1
        if status == "429":
            stop.wait(0.05)  # Retry-After says 1 s; a hostile client does not wait that long
threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in tallies]
for t in threads: t.start()
print("started", flush=True)
time.sleep(seconds)
stop.set()
for t in threads: t.join(90)
total = {}
for tally in tallies:
    for k, v in tally.items():
        total[k] = total.get(k, 0) + v
print(json.dumps(total), flush=True)
"""


# The kiosk under test, in its own process so that either tree can be imported: serves until stdin closes.
KIOSK_PROCESS = """
import inspect, json, logging, sys
from pathlib import Path
from shelfsight.edge_app.camera import VideoFileSource
from shelfsight.edge_app.demo.run import build_sample_catalog
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig, RoiConfig
from shelfsight.edge_app.runtime.factory import open_embedder
from shelfsight.edge_app.web.app import WebServer, create_app
from shelfsight.edge_app.web.config import WebConfig
model, sample, clip, catalog_path, threads, settings = *sys.argv[1:6], json.loads(sys.argv[6])
logging.basicConfig(level=logging.WARNING)
logging.getLogger("waitress").setLevel(logging.ERROR)  # "Task queue depth" on every queued request
embedder = open_embedder(model, threads=int(threads))
catalog = build_sample_catalog(Path(catalog_path), Path(sample) / "catalog", Path(sample) / "products.csv", embedder)
catalog.index()
extra = {k: settings[k] for k in ("camera_first",) if k in settings}  # the previous release has no such keys
kiosk = Kiosk(Recognizer(embedder, catalog, RecognitionConfig(), RoiConfig()), VideoFileSource(clip), **extra)
slots = {k: settings[k] for k in ("search_slots",) if k in settings}
served = {k: settings[k] for k in ("threads",) if k in settings}
# Releases before the [web] config object took one keyword per setting.
configured = "config" in inspect.signature(create_app).parameters
app = create_app(kiosk, WebConfig(**slots)) if configured else create_app(kiosk, **slots)
server = WebServer(app, "127.0.0.1", 0, **served).start()
kiosk.start()
print(server.port, flush=True)
sys.stdin.read()
kiosk.stop()
"""


def frames_recognised(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/health")
        return int(json.loads(conn.getresponse().read())["frames_recognised"])
    finally:
        conn.close()


def recognised_rate(port: int, seconds: float) -> float:
    start_frames, start = frames_recognised(port), time.monotonic()
    time.sleep(seconds)
    return (frames_recognised(port) - start_frames) / (time.monotonic() - start)


def camera_under_load(
    pythonpath: Path,
    settings: dict[str, Any],
    workdir: Path,
    model: Path,
    sample: Path,
    clip: Path,
    seconds: float,
    threads: int,
) -> dict[str, Any]:
    """Camera rate alone and during 200 clients' searches, of a kiosk served from `pythonpath`'s tree."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    catalog = workdir / f"catalog-{pythonpath.name}.db"  # each tree builds its own (schemas differ between releases)
    args = [str(model), str(sample), str(clip), str(catalog), str(threads), json.dumps(settings)]
    kiosk = subprocess.Popen(
        [sys.executable, "-c", KIOSK_PROCESS, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert kiosk.stdout is not None and kiosk.stdin is not None
    try:
        port = int(kiosk.stdout.readline())
        time.sleep(2.0)  # warm-up: first frames, caches
        alone = recognised_rate(port, seconds)
        photo_file = workdir / "photo.jpg"
        clients = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENTS_PROCESS,
                "127.0.0.1",
                str(port),
                str(CLIENTS),
                str(seconds + 2.0),
                str(photo_file),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert clients.stdout is not None
        clients.stdout.readline()  # threads started
        time.sleep(1.0)  # all clients connected and waiting
        loaded = recognised_rate(port, seconds)
        answers = json.loads(clients.stdout.readline())
        clients.wait(90)
    finally:
        kiosk.stdin.close()
        try:
            kiosk.wait(30)
        except subprocess.TimeoutExpired:
            kiosk.kill()
            kiosk.wait()
    return {
        "camera_fps_alone": round(alone, 2),
        "camera_fps_during_searches": round(loaded, 2),
        "ratio": round(loaded / alone, 3) if alone else None,
        "search_answers_by_status": dict(sorted(answers.items())),
    }


def held_open_s(host: str, port: int, cap_s: float) -> float:
    """Seconds until the server closes a connection whose request stopped half-way (cap_s if it never does)."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=cap_s) as conn:
        conn.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\npart"
        )
        try:
            while conn.recv(65536):
                pass
        except socket.timeout:
            return cap_s
        except ConnectionResetError:
            pass
    return round(time.monotonic() - started, 2)


OLD_SERVER = """
import sys, time, types
from shelfsight.edge_app.web.app import WebServer, create_app
from shelfsight.edge_app.web.config import WebConfig
server = WebServer(create_app(types.SimpleNamespace()), "127.0.0.1", 0).start()
print(server.port, flush=True)
time.sleep(float(sys.argv[1]))
"""


def slow_client(pythonpath_before: Path, cap_s: float, out: dict[str, Any]) -> None:
    """Both servers held open by one half-sent request each, at the same time (runs beside the camera rows)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath_before)}
    old = subprocess.Popen(
        [sys.executable, "-c", OLD_SERVER, str(cap_s + 30)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert old.stdout is not None
        old_port = int(old.stdout.readline())
        stub: Any = types.SimpleNamespace()  # the half-sent request never reaches a kiosk
        with WebServer(create_app(stub), "127.0.0.1", 0) as new:
            results: dict[str, float] = {}
            threads = [
                threading.Thread(target=lambda: results.update(before=held_open_s("127.0.0.1", old_port, cap_s))),
                threading.Thread(target=lambda: results.update(after=held_open_s(new.host, new.port, cap_s))),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        out.update(
            {
                "before_s": results["before"],
                "before_server": f"werkzeug development server of {PREVIOUS_RELEASE}",
                "before_closed": results["before"] < cap_s,
                "after_s": results["after"],
                "after_server": "waitress, WebServer defaults (connection_timeout_s 15)",
                "cap_s": cap_s,
            }
        )
    finally:
        old.kill()
        old.wait()


BOMBS = """
import resource, sys, threading, time
data = open(sys.argv[1], "rb").read()
if sys.argv[2] == "before":
    from shelfsight.edge_app.core.images import decode_rgb as decode
else:
    from shelfsight.edge_app.core.images import BoundedDecoder
    decode = BoundedDecoder(max_pixels=25_000_000, concurrent=2).decode
refused = []
def one():
    try:
        decode(data, "bomb.png")
    except Exception as exc:
        refused.append(type(exc).__name__)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
threads = [threading.Thread(target=one) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
wall = time.perf_counter() - started
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(len(refused), round(grown, 1), round(wall, 3))
"""


def bombs(bomb: Path, which: str, pythonpath: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run(
        [sys.executable, "-c", BOMBS, str(bomb), which], capture_output=True, text=True, check=True, env=env
    )
    refused, grown, wall = out.stdout.split()
    return {"refused": int(refused), "peak_rss_growth_mb": float(grown), "wall_s": float(wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="A .tflite embedder (default: the bundled model)")
    parser.add_argument("--seconds", type=float, default=6.0, help="Length of each camera-rate measurement")
    parser.add_argument("--cap-s", type=float, default=40.0, help="How long a held connection is watched at most")
    parser.add_argument("--threads", type=int, default=2, help="Interpreter threads")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_abuse"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_abuse.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    args.workdir.mkdir(parents=True, exist_ok=True)
    before_path = previous_release(args.workdir.resolve())
    model = resolve_model(args.model)
    sample = generate_sample_set(args.workdir / "samples")
    clip = generate_clip(args.workdir / "samples" / "clip.avi", sample)
    with VideoFileSource(clip.path, loop=False, realtime=False) as source:
        first = source.read()
    assert first is not None
    photo = encode_jpeg(first.rgb, 80)

    slow: dict[str, Any] = {}
    watcher = threading.Thread(target=slow_client, args=(before_path, args.cap_s, slow), daemon=True)
    watcher.start()  # idle sockets: no CPU taken from the camera rows it runs beside

    results: dict[str, Any] = {
        "model": str(model),
        "threads": args.threads,
        "clients": CLIENTS,
        "photo_bytes": len(photo),
    }
    (args.workdir / "photo.jpg").write_bytes(photo)
    off = {"search_slots": 10 * CLIENTS, "camera_first": False}
    setups: dict[str, tuple[Path, dict[str, Any], str]] = {
        "before": (before_path, {}, f"previous release {PREVIOUS_RELEASE}: werkzeug threaded server, plain lock"),
        "protection_off": (REPO, off, "this tree, waitress 4 threads, search_slots 2000, camera_first=False"),
        # More server threads than the pipeline can serve: what the camera priority alone is worth.
        "16_threads_priority_off": (REPO, {**off, "threads": 16}, "as protection_off with 16 waitress threads"),
        "16_threads_priority_on": (
            REPO,
            {**off, "threads": 16, "camera_first": True},
            "16 waitress threads, search_slots 2000, camera first",
        ),
        "after": (REPO, {}, "this tree, defaults: waitress 4 threads, search_slots 4 (429 beyond), camera first"),
    }
    camera = {}
    for which, (pythonpath, settings, setup) in setups.items():
        row = camera_under_load(
            pythonpath, settings, args.workdir.resolve(), model, sample.root, clip.path, args.seconds, args.threads
        )
        camera[which] = {**row, "setup": setup}
    results["camera"] = camera
    watcher.join()
    results["slow_client"] = slow

    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(tmp) / "bomb.png"
        bomb.write_bytes(png_bomb())
        results["bombs"] = {
            "bomb": f"13000x13000 grayscale PNG, {bomb.stat().st_size} bytes, 4 decoded at once",
            "before": {**bombs(bomb, "before", before_path), "code": f"decode_rgb of {PREVIOUS_RELEASE}"},
            "after": {**bombs(bomb, "after", REPO), "code": "BoundedDecoder(25M pixels, 2 at once)"},
        }

    for which, c in camera.items():
        print(
            f"{which:>23}: camera {c['camera_fps_alone']} fps alone, {c['camera_fps_during_searches']} fps during "
            f"{CLIENTS} clients' searches (ratio {c['ratio']}; answers {c['search_answers_by_status']})"
        )
    for which in ("before", "after"):
        b = results["bombs"][which]
        print(
            f"{which:>23}: half-sent request held {slow[which + '_s']} s (cap {args.cap_s}) | 4 bombs at once: "
            f"+{b['peak_rss_growth_mb']} MB peak RSS, {b['wall_s']} s, {b['refused']} refused"
        )
    write_report(args.out, results)


if __name__ == "__main__":
    main()
