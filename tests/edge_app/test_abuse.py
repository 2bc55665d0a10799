"""Hostile uploads: image bombs are refused from their header, before any pixel is decoded (issue 13, item 2)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from flask.testing import FlaskClient

from shelfsight.edge_app.core.embedder import Embedder
from shelfsight.edge_app.core.images import BoundedDecoder, ImageTooLarge, decode_rgb
from shelfsight.edge_app.kiosk.app import Kiosk
from shelfsight.edge_app.recognition import Recognizer
from shelfsight.edge_app.recognition.config import RecognitionConfig
from shelfsight.edge_app.web.app import WebServer, create_app
from shelfsight.edge_app.web.config import WebConfig

BOMB_SIDE = 13_000


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A grayscale PNG of side x side zero pixels: a few hundred KB that decode to side**2 bytes or more."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (side + 1)  # filter byte + pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture()
def kiosk_client(sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig) -> FlaskClient:
    return create_app(Kiosk(Recognizer(embedder, sample_catalog, full_config))).test_client()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_bomb())
    return path


def test_a_bomb_is_refused_by_its_header(bomb: Path) -> None:
    with pytest.raises(ImageTooLarge, match="13000x13000 pixels"):
        decode_rgb(bomb.read_bytes(), "bomb.png")


# Four bombs decoded at once in a fresh interpreter: its peak RSS is compared with the peak before.
FOUR_AT_ONCE = """
import resource, sys, threading
from shelfsight.edge_app.core.images import BoundedDecoder, ImageError
data = open(sys.argv[1], "rb").read()
decoder = BoundedDecoder(max_pixels=25_000_000, concurrent=2)
refused = []
def one():
    try:
        decoder.decode(data, "bomb.png")
    except ImageError as exc:
        refused.append(str(exc))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
threads = [threading.Thread(target=one) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(len(refused), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_four_concurrent_bombs_raise_peak_rss_by_less_than_100_mb(bomb: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FOUR_AT_ONCE, str(bomb)], capture_output=True, text=True, timeout=300, check=True
    ).stdout.split()
    refused, grown_mb = int(out[0]), int(out[1])
    assert refused == 4 and grown_mb < 100, out


def test_the_decoder_still_decodes_what_is_under_its_limit() -> None:
    small = png_bomb(64)
    assert BoundedDecoder(max_pixels=64 * 64).decode(small).shape == (64, 64, 3)
    with pytest.raises(ImageTooLarge):
        BoundedDecoder(max_pixels=64 * 64 - 1).decode(small)


def test_a_bomb_upload_gets_413_with_a_reason(kiosk_client: FlaskClient, bomb: Path) -> None:
    response = kiosk_client.post("/search", data=bomb.read_bytes(), content_type="image/png")
    assert response.status_code == 413 and "image too large (13000x13000 pixels" in response.json["error"]
    assert kiosk_client.get("/health").status_code == 200


class HeldSearch:
    """The real kiosk, except that a search waits until the test lets it go (a slot stays taken)."""

    def __init__(self, kiosk: Kiosk) -> None:
        self._kiosk, self.entered, self.release = kiosk, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kiosk, name)

    def search(self, rgb: Any, k: int | None = None) -> Any:
        self.entered.set()
        self.release.wait(60)
        return self._kiosk.search(rgb, k)


def test_a_search_over_the_admitted_number_gets_429_with_retry_after(
    sample_catalog: Any, embedder: Embedder, full_config: RecognitionConfig
) -> None:
    held = HeldSearch(Kiosk(Recognizer(embedder, sample_catalog, full_config)))
    app = create_app(held, WebConfig(search_slots=1))  # type: ignore[arg-type]
    photo = png_bomb(96)
    first: list[int] = []
    worker = threading.Thread(
        target=lambda: first.append(app.test_client().post("/search", data=photo).status_code), daemon=True
    )
    worker.start()
    assert held.entered.wait(60)
    busy = app.test_client().post("/search", data=photo)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1" and "busy" in busy.json["error"]
    held.release.set()
    worker.join(60)
    assert first == [200]
    assert app.test_client().post("/search", data=photo).status_code == 200  # the slot is free again


def raw_exchange(server: WebServer, request: bytes, read_limit_s: float = 30.0) -> bytes:
    """Send raw bytes to the real server; what it answers before closing (or the limit passes)."""
    with socket.create_connection((server.host, server.port), timeout=read_limit_s) as conn:
        conn.sendall(request)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:  # the server answered and closed with our unread body still arriving
            pass
        return answer


@pytest.fixture()
def served(kiosk_client: FlaskClient) -> Iterator[WebServer]:
    with WebServer(kiosk_client.application, "127.0.0.1", 0, connection_timeout_s=1, max_body_bytes=100_000) as server:
        yield server


def test_a_malformed_request_line_gets_400(served: WebServer) -> None:
    answer = raw_exchange(served, b"\x16\x03\x01 nonsense\r\n\r\n")
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert b"Traceback" not in answer and b"/work" not in answer


def test_a_chunked_upload_over_the_limit_gets_413(served: WebServer) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (10_000, b"x" * 10_000) for _ in range(11))  # the limit is 100,000
    head = b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n"
    answer = raw_exchange(served, head + body)
    assert b" 413 " in answer.split(b"\r\n")[0]


def test_an_unfinished_request_is_closed_by_the_server(served: WebServer) -> None:
    answer = raw_exchange(served, b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
    assert b" 200 " not in answer  # closed (the socket's 30 s read limit would raise instead)
