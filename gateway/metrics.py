"""Prometheus metrics for HTTP requests, labelled by route template (never the raw path: unbounded)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "agentmesh_gateway_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
# Time until the response headers went out: for an event stream that is the time to open it,
# not its whole life, which would drown every other observation in the same histogram.
LATENCY = Histogram(
    "agentmesh_gateway_request_seconds",
    "HTTP time to response headers",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"


class MetricsMiddleware:
    """Pure ASGI middleware (not BaseHTTPMiddleware, which buffers and breaks streaming responses)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    def route_template(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:  # PARTIAL: the path matched, the method did not (a 405)
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        route = self.route_template(scope)
        start = time.perf_counter()
        status = 500
        observed = False

        async def send_and_observe(message: Message) -> None:
            nonlocal status, observed
            if message["type"] == "http.response.start" and not observed:
                status = message["status"]
                LATENCY.labels(method, route, str(status)).observe(time.perf_counter() - start)
                observed = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            if not observed:
                LATENCY.labels(method, route, str(status)).observe(time.perf_counter() - start)
            REQUESTS.labels(method, route, str(status)).inc()
