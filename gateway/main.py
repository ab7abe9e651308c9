"""`agentmesh serve gateway`: run the HTTP gateway under uvicorn on uvloop.

Shutdown: the first SIGTERM/SIGINT marks the gateway draining (/healthz answers 503, open event
streams end so their clients reconnect elsewhere with Last-Event-ID), uvicorn stops accepting and
waits up to `shutdown_grace_s` for in-flight requests, the coordinator channel closes, exit 0.
A second signal forces the exit.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.upstream import Upstream
from services.runtime.config import load
from services.runtime.logs import setup_logging

log = logging.getLogger(__name__)


def parse_listen_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port_text = addr.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class _Server(uvicorn.Server):
    """uvicorn's server, with the mesh's signal contract: drain on the first signal, force on the second."""

    def __init__(self, config: uvicorn.Config, upstream: Upstream) -> None:
        super().__init__(config)
        self._upstream = upstream

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self._upstream.begin_drain()
        super().handle_exit(sig, frame)


def _swallow(signum: int, frame: FrameType | None) -> None:
    """Installed before uvicorn runs: uvicorn re-raises the signal it handled once it has shut down,
    which with the default handler would end the process by that signal instead of with exit 0."""


def main(argv: list[str]) -> int:
    config = load(GatewayConfig, argv, prog="agentmesh serve gateway")
    setup_logging("gateway", config.log_level, config.log_format)
    try:
        host, port = parse_listen_addr(config.gateway_addr)
    except ValueError as exc:
        log.error("gateway_addr: %s", exc)
        return 2
    app = create_app(config)
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        lifespan="on",
        log_config=None,  # keep the mesh's log format (setup_logging) for uvicorn's loggers too
        log_level=config.log_level.lower(),
        access_log=config.access_log,
        timeout_graceful_shutdown=max(1, round(config.shutdown_grace_s)),
        server_header=False,
    )
    server = _Server(server_config, app.state.gateway.upstream)
    previous = {sig: signal.signal(sig, _swallow) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("gateway starting on http://%s:%d", host, port)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or start
        code = exc.code if isinstance(exc.code, int) else 1
        log.error("gateway failed to start (exit %d)", code)
        return code or 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    log.info("gateway stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
