"""A real S3 server (nanio) on 127.0.0.1 for the object-store tests, plus a TCP proxy that cuts the
first connection that moves more than N bytes (an interrupted transfer)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ACCESS_KEY = "autocompress-test"
SECRET_KEY = "test-secret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def nanio_server(data_dir: Path, port: int | None = None):
    """Start `nanio serve` on a free loopback port (or `port`); yields the endpoint 'http://127.0.0.1:PORT'."""
    port = port or free_port()
    env = {**os.environ, "NANIO_ACCESS_KEY": ACCESS_KEY, "NANIO_SECRET_KEY": SECRET_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanio", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--no-access-log", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_env(endpoint: str, access: str = ACCESS_KEY, secret: str = SECRET_KEY) -> dict:
    return {"S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


class CuttingProxy:
    """Forwards 127.0.0.1:port -> upstream. The first `cuts` times a connection has moved more than
    `cut_after` bytes in the watched direction ('down' = server->client, 'up' = client->server), it is
    closed mid-transfer, after calling `on_cut()` (e.g. to stop the server: the store going away).
    While nothing listens upstream, connections are accepted and reset. Bounded: it only serves this
    test's client and stops with `close()`."""

    def __init__(self, upstream_port: int, cut_after: int, direction: str = "down", cuts: int = 1, on_cut=None):
        self.upstream_port, self.cut_after, self.direction = upstream_port, cut_after, direction
        self.on_cut = on_cut
        self.cuts_left = cuts
        self.cut_count = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is gone: the client sees its connection reset
                client.close()
                continue
            with self._lock:
                armed = self.cuts_left > 0
            state = {"armed": armed, "moved": 0, "closed": False}
            threading.Thread(target=self._pipe, args=(client, upstream, "up", state), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, "down", state), daemon=True).start()

    def _pipe(self, src, dst, direction, state):
        try:
            while not state["closed"]:
                data = src.recv(65536)
                if not data:
                    break
                if state["armed"] and direction == self.direction:
                    state["moved"] += len(data)
                    if state["moved"] > self.cut_after:
                        with self._lock:
                            fire = self.cuts_left > 0
                            if fire:
                                self.cuts_left -= 1
                                self.cut_count += 1
                        if fire:
                            dst.sendall(data[: len(data) // 2])
                            if self.on_cut is not None:
                                self.on_cut()
                            break
                        state["armed"] = False
                dst.sendall(data)
        except OSError:
            pass
        finally:
            state["closed"] = True
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self):
        self._stop.set()
        self._sock.close()
