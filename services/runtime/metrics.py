"""Prometheus metrics that cost nothing while a service's metrics are off.

Loading the Prometheus client costs about 4 MB of every process's RSS. Most of that is the modules
its exporter imports: http.server, wsgiref, urllib.request, email. A service whose metrics port is
off (the default) never loads it. Its metrics are declared the same way. Each one becomes the
client's own once the bootstrap turns metrics on; otherwise it records nothing.

    RPC_TOTAL = metrics.Counter("agentmesh_rpc_total", "RPCs handled", ["method", "code"])
    RPC_TOTAL.labels("Submit", "OK").inc()

`services.runtime.server` calls `configure` before a service sets up. Code that runs without that
bootstrap, such as tests that drive a servicer directly, gets real metrics.
"""

from __future__ import annotations

from typing import Any

# None until the bootstrap decides (code without it, such as tests driving a servicer, gets real
# metrics, made on first use); then True or False.
_enabled: bool | None = None
_declared: list[_Metric] = []


def configure(enabled: bool) -> None:
    """Whether metrics are real. When they are, every metric declared so far is made now, so the
    endpoint lists each family from the start, as the Prometheus client does, not only after its
    first sample."""
    global _enabled
    _enabled = enabled
    if enabled:
        for metric in _declared:
            metric.make()


class _Nothing:
    """What a metric is while metrics are off: every call accepted, nothing kept."""

    def labels(self, *_: Any, **__: Any) -> _Nothing:
        return self

    def _ignore(self, *_: Any, **__: Any) -> None:
        return None

    inc = dec = set = observe = set_function = _ignore


_NOTHING = _Nothing()


class _Metric:
    """A metric made when metrics are on: the Prometheus client's own; else nothing."""

    __slots__ = ("_kind", "_args", "_kwargs", "_made")

    def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
        self._kind, self._args, self._kwargs = kind, args, kwargs
        self._made: Any = None
        _declared.append(self)
        if _enabled:
            self.make()

    def make(self) -> Any:
        if self._made is None:
            import prometheus_client  # noqa: PLC0415 - only when metrics are on: see the module doc

            self._made = getattr(prometheus_client, self._kind)(*self._args, **self._kwargs)
        return self._made

    def _target(self) -> Any:
        made = self._made
        if made is None:
            made = _NOTHING if _enabled is False else self.make()
        return made

    # Spelled out rather than one __getattr__: RPC_TOTAL.labels(...) runs on every RPC, and a
    # failed attribute lookup before __getattr__ costs more than the call itself.
    def labels(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().labels(*args, **kwargs)

    def inc(self, amount: float = 1) -> None:
        self._target().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._target().dec(amount)

    def set(self, value: float) -> None:
        self._target().set(value)

    def observe(self, value: float) -> None:
        self._target().observe(value)

    def set_function(self, function: Any) -> None:
        self._target().set_function(function)


def Counter(name: str, documentation: str, labelnames: list[str] | tuple[str, ...] = ()) -> Any:  # noqa: N802
    return _Metric("Counter", name, documentation, labelnames)


def Gauge(name: str, documentation: str, labelnames: list[str] | tuple[str, ...] = ()) -> Any:  # noqa: N802
    return _Metric("Gauge", name, documentation, labelnames)


def Histogram(  # noqa: N802
    name: str, documentation: str, labelnames: list[str] | tuple[str, ...] = (), **kwargs: Any
) -> Any:
    return _Metric("Histogram", name, documentation, labelnames, **kwargs)


def serve(port: int) -> None:
    """The Prometheus text endpoint on 127.0.0.1:`port`, on a thread of its own."""
    from prometheus_client import start_http_server  # noqa: PLC0415 - only when metrics are on

    start_http_server(port, addr="127.0.0.1")
