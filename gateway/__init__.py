"""agentmesh's HTTP/JSON + Server-Sent Events gateway to the coordinator, with the web dashboard.

`create_app(config, client=None)` builds the ASGI app; `gateway.main.main(argv)` serves it.
"""

from gateway.app import create_app
from gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app"]
