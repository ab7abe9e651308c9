"""`agentmesh debug stacks|heap|profile SERVICE`: look inside a running service, over its Debug
service (services/runtime/debug.py), with the mesh's admin key, from the service's own machine.

`profile` writes a flame graph (SVG) and the folded stacks beside it; with py-spy installed and the
service's process visible here, py-spy takes the profile instead (it sees native frames too), and
the built-in sampler is the fallback."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVICES = ("coordinator", "planner", "executor", "inference")


def add_parsers(sub: Any, data_dir: Callable[[], Path]) -> None:
    debug = sub.add_parser("debug", help="stacks, heap and a profile of a running service (the mesh's pprof)")
    kinds = debug.add_subparsers(dest="debug_command", required=True)

    def parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help_text)
        p.add_argument("service", help=f"{', '.join(SERVICES)}, or HOST:PORT of any gRPC service")
        p.add_argument(
            "--admin-key", default=None, help="default: $AGENTMESH_ADMIN_KEY or DATA_DIR/admin.key"
        )
        p.add_argument("--data-dir", default=str(data_dir()))
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    parser("stacks", "every thread's and asyncio task's stack")
    heap = parser("heap", "top allocation sites (tracemalloc), and what grew since the last call")
    heap.add_argument("--top", type=int, default=20)
    heap.add_argument("--stop", action="store_true", help="stop tracing (it slows the service while on)")
    profile = parser("profile", "a sampling profile as a flame graph")
    profile.add_argument("--seconds", type=float, default=10.0)
    profile.add_argument("--interval", type=float, default=0.005, help="seconds between samples")
    profile.add_argument("--out", default="", help="the SVG file (default: SERVICE-profile.svg)")
    profile.add_argument("--sampler", choices=("auto", "builtin", "py-spy"), default="auto")


def address_of(service: str) -> str:
    if ":" in service:
        return service
    if service not in SERVICES:
        raise SystemExit(f"unknown service {service!r}: {', '.join(SERVICES)}, or HOST:PORT")
    from services.runtime import config as config_mod
    from services.runtime.config import CommonConfig

    return str(getattr(config_mod.load(CommonConfig, [], prog="agentmesh debug"), f"{service}_addr"))


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import grpc

    from agentmesh.admin_cli import admin_key, print_message_json, print_rpc_error
    from protos.agentmesh.v1 import debug_pb2, debug_pb2_grpc

    metadata = (("authorization", f"Bearer {admin_key(args)}"),)
    command = args.debug_command
    async with grpc.aio.insecure_channel(address_of(args.service)) as channel:
        stub = debug_pb2_grpc.DebugStub(channel)
        try:
            if command == "stacks":
                reply: Any = await stub.Stacks(debug_pb2.StacksRequest(), metadata=metadata, timeout=30)
            elif command == "heap":
                request = debug_pb2.HeapRequest(top=args.top, stop=args.stop)
                reply = await stub.Heap(request, metadata=metadata, timeout=120)
            else:
                out = Path(args.out or f"{args.service.replace(':', '_')}-profile.svg")
                if args.sampler != "builtin" and shutil.which("py-spy"):
                    pid = (await stub.Stacks(debug_pb2.StacksRequest(), metadata=metadata, timeout=30)).pid
                    if _py_spy(pid, args.seconds, out):
                        return 0
                    if args.sampler == "py-spy":
                        return 1
                elif args.sampler == "py-spy":
                    print("py-spy is not installed here", file=sys.stderr)
                    return 1
                request = debug_pb2.ProfileRequest(seconds=args.seconds, interval_s=args.interval)
                reply = await stub.Profile(request, metadata=metadata, timeout=args.seconds + 60)
        except grpc.aio.AioRpcError as exc:
            print_rpc_error(exc)
            return 1
    if command == "profile":
        return _write_profile(reply, args, out)
    if args.json:
        print_message_json(reply)
        return 0
    if command == "stacks":
        counts = f"{len(reply.threads)} threads, {len(reply.tasks)} asyncio tasks"
        print(f"{reply.service} (pid {reply.pid}): {counts}\n")
        for thread in reply.threads:
            daemon = ", daemon" if thread.daemon else ""
            print(f"--- thread {thread.name} ({thread.ident}{daemon})\n{thread.stack}")
        for task in reply.tasks:
            print(f"--- task {task.name}: {task.coroutine}\n{task.stack}")
    else:
        _print_heap(reply)
    return 0


def _print_heap(reply: Any) -> None:
    if not reply.tracing:
        print(f"tracing stopped (RSS {reply.rss_bytes / 1e6:.1f} MB)")
        return
    if reply.started_now:
        print(
            "heap tracing started: call again to see allocations (and --stop when done: it slows the service)"
        )
        return
    print(
        f"traced {reply.traced_bytes / 1e6:.2f} MB (peak {reply.peak_bytes / 1e6:.2f} MB), "
        f"RSS {reply.rss_bytes / 1e6:.1f} MB\n\ntop allocation sites:"
    )
    for a in reply.top:
        print(f"  {a.size_bytes / 1e3:10.1f} KB {a.count:8d} blocks  {a.where}")
    if reply.since_s:
        print(f"\ngrown in the last {reply.since_s:.1f}s:")
        for a in reply.grown:
            print(f"  {a.size_diff_bytes / 1e3:+10.1f} KB {a.count_diff:+8d} blocks  {a.where}")


def _write_profile(reply: Any, args: argparse.Namespace, out: Path) -> int:
    from agentmesh.flamegraph import folded_text, render

    stacks = [(s.stack, s.count) for s in reply.stacks]
    title = f"{args.service} (pid {reply.pid}): {reply.samples} samples over {reply.seconds:g}s"
    out.write_text(render(stacks, title))
    folded = out.with_suffix(".folded")
    folded.write_text(folded_text(stacks))
    if args.json:
        print(
            json.dumps(
                {"svg": str(out), "folded": str(folded), "samples": reply.samples, "stacks": len(stacks)}
            )
        )
    else:
        print(f"{reply.samples} samples: flame graph {out}, folded stacks {folded}")
    return 0


def _py_spy(pid: int, seconds: float, out: Path) -> bool:
    done = subprocess.run(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--format",
         "flamegraph", "--output", str(out), "--nonblocking"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        why = done.stderr.strip()[-300:]
        print(f"py-spy could not profile pid {pid} ({why}); using the built-in sampler", file=sys.stderr)
        return False
    print(f"py-spy: flame graph {out}")
    return True
