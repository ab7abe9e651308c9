"""`agentmesh serve bus`: the ZeroMQ XSUB/XPUB forwarder every service publishes and subscribes through."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop

from services.runtime import config as config_mod
from services.runtime.bus import run_forwarder_until
from services.runtime.config import CommonConfig
from services.runtime.logs import setup_logging

log = logging.getLogger(__name__)


async def _serve(config: CommonConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_forwarder_until(stop, config.bus_pub_addr, config.bus_sub_addr)
    log.info("bus stopped")
    return 0


def main(argv: list[str]) -> int:
    config = config_mod.load(CommonConfig, argv, prog="agentmesh serve bus")
    setup_logging("bus", config.log_level, config.log_format)
    return uvloop.run(_serve(config))
