"""A real S3 API on loopback for the tests (moto in server mode), and a relay that can stall an upload."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3:
    endpoint: str
    fs: object  # s3fs.S3FileSystem on the endpoint

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment a process needs to reach this server (the store's usual variables)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint or self.endpoint}


@contextmanager
def _moto_process() -> Iterator[str]:
    """moto's server in a process of its own (so it does not share this process's GIL); yields its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


@contextmanager
def _moto_thread() -> Iterator[str]:
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def s3_server(bucket: str, *, own_process: bool = False) -> Iterator[S3]:
    """Start moto's S3 server on 127.0.0.1 (in a thread here, or `own_process`), point this process at it
    (AWS_* variables), make `bucket`."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with _moto_process() if own_process else _moto_thread() as endpoint, _pointed_at(endpoint, bucket) as s3:
        yield s3


@contextmanager
def _pointed_at(endpoint: str, bucket: str) -> Iterator[S3]:
    import s3fs

    s3 = S3(endpoint=endpoint, fs=None)
    saved = {k: os.environ.get(k) for k in (*CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(s3.env())
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        s3.fs = s3fs.S3FileSystem()
        s3.fs.mkdir(bucket)
        yield s3
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class StallingRelay:
    """A TCP relay to `upstream` (host, port) on 127.0.0.1 that forwards everything, except that once a
    request line containing `marker` has passed it forwards `after` more bytes of that connection and then
    stops forwarding (the upload hangs midway, as on a lost link); `stalled` is set then."""

    def __init__(self, upstream: tuple[str, int], marker: bytes, after: int) -> None:
        self.upstream, self.marker, self.after = upstream, marker, after
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        budget: int | None = None
        seen = b""
        try:
            while data := src.recv(65536):
                if watch and budget is None:
                    seen = (seen + data)[-4096:]
                    if self.marker in seen:
                        budget = self.after
                if budget is not None:
                    data, budget = data[:budget], max(0, budget - len(data))
                    if data:
                        dst.sendall(data)
                    if budget == 0:
                        self.stalled.set()
                        threading.Event().wait()  # hold the connection open, forwarding nothing more
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
