"""Structured logging: every line carries the service name, the pid, and the task id in scope."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

current_task_id: contextvars.ContextVar[str] = contextvars.ContextVar("agentmesh_task_id", default="")


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.pid_ = self.pid
        record.task_id = current_task_id.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "service": record.service,  # type: ignore[attr-defined]
            "pid": record.pid_,  # type: ignore[attr-defined]
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.task_id:  # type: ignore[attr-defined]
            line["task_id"] = record.task_id  # type: ignore[attr-defined]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        task = f" task={record.task_id}" if record.task_id else ""  # type: ignore[attr-defined]
        text = (
            f"{stamp} {record.levelname[0]} {record.service}[{record.pid_}]{task} "  # type: ignore[attr-defined]
            f"{record.name}: {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
