"""`agentmesh serve bus`: the ZeroMQ XSUB/XPUB forwarder every service publishes and subscribes through.

Deliberately small: no event loop, no gRPC; the forwarder thread moves messages, the main thread
waits for SIGTERM/SIGINT and stops it.
"""

from __future__ import annotations

import logging
import signal

from services.runtime import config as config_mod
from services.runtime.bus import Forwarder
from services.runtime.config import CommonConfig
from services.runtime.logs import setup_logging

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    config = config_mod.load(CommonConfig, argv, prog="agentmesh serve bus")
    setup_logging("bus", config.log_level, config.log_format)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the forwarder thread starts, so it inherits the mask and only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    forwarder = Forwarder(config.bus_pub_addr, config.bus_sub_addr)
    try:
        forwarder.start()
    except Exception as exc:  # noqa: BLE001 - a bind failure is the one thing that can go wrong here
        log.error("cannot start the bus on %s / %s: %s", config.bus_pub_addr, config.bus_sub_addr, exc)
        return 2
    log.info("bus forwarding %s -> %s", config.bus_pub_addr, config.bus_sub_addr)
    received = signal.sigwait(stop_signals)
    log.info("received %s: stopping", signal.Signals(received).name)
    forwarder.stop()
    log.info("bus stopped")
    return 0
