"""The gateway's ASGI application: `create_app(config)` is all a server (uvicorn) or a test needs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from agentmesh.client import AgentMeshClient
from gateway import openapi
from gateway.config import GatewayConfig
from gateway.metrics import MetricsMiddleware
from gateway.routes import ROUTES, GatewayState, http_exception, server_error
from gateway.upstream import Upstream

log = logging.getLogger(__name__)


def _dashboard_html() -> str:
    return resources.files("gateway").joinpath("dashboard.html").read_text(encoding="utf-8")


def create_app(config: GatewayConfig, client: AgentMeshClient | None = None) -> Starlette:
    """The HTTP app, talking to the coordinator at `config.coordinator_addr`.

    With `client` given, requests go through it (and its channel, which the caller keeps owning);
    otherwise the app opens its own channel on first use and closes it at shutdown. `app.state.gateway`
    holds the state; `app.state.gateway.upstream.begin_drain()` ends open event streams (on SIGTERM).
    """
    upstream = Upstream(config.coordinator_addr, config.request_timeout_s, client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstream.bind_loop()
        log.info("gateway forwarding to the coordinator at %s", upstream.address)
        try:
            yield
        finally:
            await upstream.close()

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(MetricsMiddleware, routes=ROUTES)],
        exception_handlers={HTTPException: http_exception, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.gateway = GatewayState(
        config=config, upstream=upstream, dashboard_html=_dashboard_html(), docs_html=openapi.render_html()
    )
    return app
