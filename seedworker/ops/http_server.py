"""A tiny HTTP endpoint beside the worker: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Three GET routes, one response per connection: asyncio's streams are enough, and the worker gains no web framework.
It runs on the worker's event loop, so a live answer from ``/healthz`` also says the loop is not stuck.
Liveness: the process answers. Readiness: the store is open and the consumer started (``Worker.readiness``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from seedworker.core.config import ConfigError, MetricsSettings
from seedworker.ops.metrics import CONTENT_TYPE, WorkerMetrics

if TYPE_CHECKING:
    from seedworker.engine.worker import Worker

log = logging.getLogger("seedworker.http")

METRICS_PATH = "/metrics"
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
ROUTES = (METRICS_PATH, LIVENESS_PATH, READINESS_PATH)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_READ_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100


class HttpServer:
    """``await start()``, then ``port`` is the bound port (useful with port 0 in tests); ``await stop()``.

    ``exposition`` returns the body of /metrics (text format 0.0.4, UTF-8); it is awaited on each scrape, so it can
    do I/O first (``WorkerMetrics.exposition`` reads the consumer lag)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int,
        exposition: Callable[[], Awaitable[bytes]],
        readiness: Callable[[], dict[str, bool]],
    ):
        self.host = host
        self.port = port
        self.exposition = exposition
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {self.host}:{self.port}: {exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d%s", self.host, self.port, METRICS_PATH)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head = await self._respond(reader)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if not head:
                writer.write(body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or never finished its request: nothing to answer
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        try:
            line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            for _ in range(_MAX_HEADER_LINES):  # the headers are read and ignored
                if (await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)) in (b"\r\n", b"\n", b""):
                    break
        except ValueError:  # a line longer than the stream's limit
            return _text(400, "request too large\n") + (False,)
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _text(400, "bad request line\n") + (False,)
        method, target = parts[0], parts[1].split("?", 1)[0]
        head = method == "HEAD"
        if target not in ROUTES:
            return _text(404, f"not found; try {', '.join(ROUTES)}\n") + (head,)
        if method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD\n") + (head,)
        if target == LIVENESS_PATH:
            return _text(200, "ok\n") + (head,)
        if target == READINESS_PATH:
            checks = self.readiness()
            ready = all(checks.values())
            body = orjson.dumps({"ready": ready, **checks}, option=orjson.OPT_APPEND_NEWLINE)
            return (200 if ready else 503), "application/json", body, head
        try:
            body = await self.exposition()
        except Exception:  # a scrape must not take the worker down; the failure is logged and answered
            log.exception("metrics exposition failed")
            return _text(500, "metrics exposition failed\n") + (head,)
        return 200, CONTENT_TYPE, body, head


def _text(status: int, text: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", text.encode()


def endpoint_for(worker: Worker, settings: MetricsSettings) -> HttpServer | None:
    """The worker's endpoint as configured; None when ``metrics.port`` is 0 (disabled)."""
    if settings.port == 0:
        return None
    return HttpServer(
        host=settings.host,
        port=settings.port,
        exposition=WorkerMetrics.of(worker).exposition,
        readiness=worker.readiness,
    )


async def run_with_endpoint(worker: Worker, settings: MetricsSettings) -> None:
    """Serve the endpoint from before the worker starts (probes see "not ready" while it connects) until it stops."""
    server = endpoint_for(worker, settings)
    if server is not None:
        await server.start()
    try:
        await worker.run()
    finally:
        if server is not None:
            await server.stop()
