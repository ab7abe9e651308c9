"""The gateway's configuration: the mesh-wide settings plus the HTTP edge's own limits."""

from __future__ import annotations

import dataclasses

from services.runtime.config import CommonConfig, setting


@dataclasses.dataclass(frozen=True)
class GatewayConfig(CommonConfig):
    """Listens on `gateway_addr`, forwards to the coordinator at `coordinator_addr`."""

    max_body_bytes: int = setting(1024 * 1024, "largest accepted request body, in bytes (413 above it)")
    max_json_depth: int = setting(64, "deepest accepted nesting of JSON arrays/objects in a request body")
    sse_keepalive_s: float = setting(15.0, "seconds between keepalive comments on an idle event stream")
    request_timeout_s: float = setting(30.0, "deadline of each unary call to the coordinator")
    health_timeout_s: float = setting(2.0, "deadline of the coordinator health check behind /healthz")
    access_log: bool = setting(True, "log one line per HTTP request")
