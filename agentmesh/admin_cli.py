"""`agentmesh keys create|list|revoke` and `agentmesh audit`: the operator's commands, over the
coordinator's Admin service, with the mesh's admin key (--admin-key, $AGENTMESH_ADMIN_KEY, or
DATA_DIR/admin.key on the coordinator's machine)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(text: str) -> float:
    """'90', '90s', '15m', '12h', '30d', '2w' -> seconds."""
    match = DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 3600, 15m, 12h, 30d or 2w")
    return float(match.group(1)) * UNIT_S[match.group(2)]


def add_parsers(sub: Any, data_dir: Callable[[], Path]) -> None:
    def admin_parser(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text)
        p.add_argument("--address", default=os.environ.get("AGENTMESH_COORDINATOR_ADDR", "127.0.0.1:50051"))
        p.add_argument(
            "--admin-key", default=None, help="default: $AGENTMESH_ADMIN_KEY or DATA_DIR/admin.key"
        )
        p.add_argument("--data-dir", default=str(data_dir()))
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    keys = sub.add_parser("keys", help="create, list and revoke tenants' API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = admin_parser(keys_sub, "create", "a new API key for a tenant (its secret is shown once)")
    create.add_argument("tenant")
    create.add_argument("--label", default="")
    create.add_argument("--expires-in", type=duration_s, default=0.0, help="e.g. 30d (default: never)")
    listing = admin_parser(keys_sub, "list", "the API keys, from the configuration and the store")
    listing.add_argument("--tenant", default="")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = admin_parser(keys_sub, "revoke", "refuse a key from now on, on every coordinator")
    revoke.add_argument("id")
    audit = admin_parser(sub, "audit", "who cancelled, answered, resolved or changed keys, newest first")
    audit.add_argument("--tenant", default="")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--before", type=float, default=0.0, help="entries older than this unix time")


def admin_key(args: argparse.Namespace) -> str:
    """The mesh's admin key: --admin-key, $AGENTMESH_ADMIN_KEY, or DATA_DIR/admin.key."""
    from services.runtime.mesh_keys import ADMIN_KEY_FILE_NAME

    if args.admin_key:
        return str(args.admin_key)
    if os.environ.get("AGENTMESH_ADMIN_KEY"):
        return os.environ["AGENTMESH_ADMIN_KEY"]
    path = Path(args.data_dir) / ADMIN_KEY_FILE_NAME
    if not path.exists():
        raise SystemExit(f"no admin key: pass --admin-key, set $AGENTMESH_ADMIN_KEY, or run where {path} is")
    return path.read_text().strip()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import grpc
    from rich.console import Console
    from rich.table import Table

    from protos.agentmesh.v1 import agent_service_pb2 as api
    from protos.agentmesh.v1 import agent_service_pb2_grpc as api_grpc

    console = Console()
    metadata = (("authorization", f"Bearer {admin_key(args)}"),)
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = api_grpc.AdminStub(channel)
        try:
            if args.command == "audit":
                reply: Any = await stub.ListAudit(
                    api.ListAuditRequest(tenant=args.tenant, limit=args.limit, before=args.before),
                    metadata=metadata,
                    timeout=30,
                )
            elif args.keys_command == "create":
                reply = await stub.CreateKey(
                    api.CreateKeyRequest(tenant=args.tenant, label=args.label, expires_in_s=args.expires_in),
                    metadata=metadata,
                    timeout=30,
                )
            elif args.keys_command == "list":
                reply = await stub.ListKeys(
                    api.ListKeysRequest(tenant=args.tenant, include_revoked=args.all),
                    metadata=metadata,
                    timeout=30,
                )
            else:
                reply = await stub.RevokeKey(api.RevokeKeyRequest(id=args.id), metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            print_rpc_error(exc)
            return 1
    if args.json:
        print_message_json(reply)
        return 0
    if args.command == "audit":
        table = Table(title="audit log, newest first")
        for column in ("when", "tenant", "key", "action", "target", "detail"):
            table.add_column(column)
        for e in reply.entries:
            table.add_row(_when(e.at), e.tenant, e.key_id, e.action, e.target, e.detail_json)
        console.print(table)
    elif args.keys_command == "create":
        console.print(
            f"API key {reply.key.id} for tenant [bold]{reply.key.tenant}[/bold] (shown once, keep it):"
        )
        print(reply.secret)
        if reply.key.expires_at:
            console.print(f"expires {_when(reply.key.expires_at)}")
    elif args.keys_command == "list":
        table = Table(title="API keys")
        for column in ("id", "tenant", "label", "source", "created", "expires", "revoked"):
            table.add_column(column)
        for k in reply.keys:
            table.add_row(
                k.id,
                k.tenant,
                k.label,
                k.source,
                _when(k.created_at),
                _when(k.expires_at),
                _when(k.revoked_at),
            )
        console.print(table)
    else:
        console.print(f"API key {reply.id} of tenant {reply.tenant} revoked {_when(reply.revoked_at)}")
    return 0


def print_message_json(message: Any) -> None:
    """A reply as JSON, with its empty fields too (a script reads the same keys every time)."""
    from google.protobuf.json_format import MessageToDict

    print(
        json.dumps(
            MessageToDict(
                message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            indent=2,
        )
    )


def print_rpc_error(exc: Any) -> None:
    from services.runtime.errors import from_rpc_error

    error = from_rpc_error(exc)
    print(f"{error.code.name} {error.reason}: {error.message}", file=sys.stderr)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""
