"""A file server on 127.0.0.1 for download tests (it counts the requests it gets and can cut
a transfer short), and a way to start several processes at the same moment."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclasses.dataclass
class FileServer:
    """What :func:`file_server` serves and has been asked for."""

    base_url: str
    files: Mapping[str, bytes]
    cut: Mapping[str, int]  # name -> bytes sent before the connection closes
    delay: float  # seconds between the headers and the body
    requests: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def count(self, name: str, method: str = "GET") -> int:
        with self.lock:
            return self.requests[(method, name)]


class _Handler(BaseHTTPRequestHandler):
    served: FileServer  # set on the subclass :func:`file_server` makes

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, body: bool) -> None:
        served, name = self.served, self.path.lstrip("/")
        with served.lock:
            served.requests[(self.command, name)] += 1
        data = served.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))  # the whole file's, even when cut
        self.end_headers()
        if body:
            time.sleep(served.delay)
            self.wfile.write(data[: served.cut.get(name, len(data))])
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: no line per request
        pass


@contextlib.contextmanager
def file_server(
    files: Mapping[str, bytes], cut: Mapping[str, int] | None = None, delay: float = 0.0
) -> Iterator[FileServer]:
    """Serve ``files`` (name -> bytes) over HTTP on 127.0.0.1 from a background thread.

    ``cut``: for these names, only that many bytes of the body are sent (after a
    ``Content-Length`` of the whole file) before the connection closes: an interrupted
    transfer. ``delay`` holds every body back that long, so concurrent downloads overlap.
    """
    served = FileServer("", dict(files), dict(cut or {}), delay)
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _together(
    barrier: Any, fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    barrier.wait()
    fn(*args, **kwargs)


def run_together(
    fn: Callable[..., object],
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    processes: int = 2,
    timeout: float = 300.0,
) -> list[int | None]:
    """Call ``fn(*args, **kwargs)`` in ``processes`` fresh (spawned) processes that start it at
    the same moment, once all have imported what they need; returns their exit codes.

    ``fn`` and its arguments must pickle (a module-level function); the processes inherit
    the environment (e.g. ``TORCH_HOME``).
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    workers = [
        context.Process(target=_together, args=(barrier, fn, args, dict(kwargs or {})))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
        if worker.is_alive():
            worker.kill()
            worker.join()
    return [worker.exitcode for worker in workers]
