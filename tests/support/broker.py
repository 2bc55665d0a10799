"""A local Mosquitto process (temp config, free port, kill/restart) for tests, benchmarks and demos.

Not used by kiosks or HQ in production: they connect to a broker run by operations.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shelfsight.catalog.sync.limits import MAX_PACKET_BYTES
from shelfsight.edge_app.core.errors import SyncError

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"
# The example config's settings that decide what a client can receive and how much may be in flight.
LIMIT_SETTINGS = ("max_packet_size", "message_size_limit", "max_inflight_messages", "max_queued_messages")


def example_settings(path: Path = EXAMPLE_CONFIG) -> dict[str, str]:
    """`setting value` lines of a Mosquitto config (comments and blank lines skipped; the last one wins)."""
    settings: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = line.split(None, 1)
        if words and not words[0].startswith("#"):
            settings[words[0]] = words[1].strip() if len(words) > 1 else ""
    return settings


def example_limits() -> list[str]:
    """The example config's size and in-flight limit lines, for a test broker that behaves like it."""
    settings = example_settings()
    return [f"{key} {settings[key]}" for key in LIMIT_SETTINGS if key in settings]


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """One mosquitto on 127.0.0.1:`port`, configured by `extra` lines appended to a base config."""

    workdir: Path
    port: int = field(default_factory=free_port)
    max_queued_messages: int = 1000
    # The fleet's packet limit, as in deploy/mosquitto/mosquitto.conf (a bigger one would stall clients).
    max_packet_size: int = MAX_PACKET_BYTES
    extra: list[str] = field(default_factory=list)
    anonymous: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_packet_size {self.max_packet_size}",
            "max_inflight_messages 100",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *self.extra,
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto would switch to user "mosquitto" and lose access to our temp files.
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> "Broker":
        binary = mosquitto_binary()
        if binary is None:
            raise SyncError("mosquitto binary not found")
        self.write_config()
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SyncError(f"mosquitto exited: {self.log_path.read_text() if self.log_path.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise SyncError("mosquitto did not start listening")

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final persistence save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def restart(self, *, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        self.start()


def bridge_lines(remote_port: int, *, client_id: str = "store-north") -> list[str]:
    """The example store bridge (deploy/mosquitto/bridge-store.conf) pointed at 127.0.0.1:`remote_port`, no TLS."""
    keep = ("topic ", "cleansession ", "restart_timeout ")
    example = (EXAMPLE_CONFIG.parent / "bridge-store.conf").read_text().splitlines()
    return [
        "connection hq",
        f"address 127.0.0.1:{remote_port}",
        f"remote_clientid {client_id}",
        *(line for line in example if line.startswith(keep)),
    ]


class TcpRelay:
    """A TCP forwarder between a client and a server that can be cut (a network outage) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        """Cut every connection and refuse new ones."""
        self._up.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.down()
        self._listener.close()


def add_password(password_file: Path, username: str, password: str) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    flags = ["-b"] if password_file.exists() else ["-c", "-b"]
    subprocess.run([tool, *flags, str(password_file), username, password], check=True, capture_output=True)
