"""The `agentmesh` command: run the mesh (`up`, `serve`) and use it (`submit`, `watch`, ...)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

SERVICES = {
    "bus": "services.bus.main",
    "coordinator": "services.coordinator.main",
    "planner": "services.planner.main",
    "executor": "services.executor.main",
    "inference": "services.inference.main",
    "gateway": "gateway.main",
}
# Start order: what others connect to first. Stop order is the reverse.
UP_ORDER = ("bus", "planner", "executor", "inference", "coordinator", "gateway")
RESTART_BUDGET = 5  # `agentmesh up --restarts`: see services/runtime/healing.py


def _default_data_dir() -> Path:
    return Path(os.environ.get("AGENTMESH_DATA_DIR", "./.agentmesh"))


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key:
        return args.api_key
    if os.environ.get("AGENTMESH_API_KEY"):
        return os.environ["AGENTMESH_API_KEY"]
    key_file = Path(args.data_dir) / "default.key"
    return key_file.read_text().strip() if key_file.exists() else None


# ---------------------------------------------------------------------------- up / serve / health


def cmd_serve(args: argparse.Namespace, rest: list[str]) -> int:
    # Services never fork a process that goes on using gRPC (the executor fork+execs tools at once),
    # so gRPC's fork handlers are only a hazard while other threads are inside gRPC.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    module = importlib.import_module(SERVICES[args.service])
    return module.main(rest)


def cmd_up(args: argparse.Namespace, rest: list[str]) -> int:
    from rich.console import Console
    from rich.markup import escape

    from services.coordinator.auth import ensure_default_key
    from services.runtime import config as config_mod
    from services.runtime.config import CommonConfig
    from services.runtime.healing import STATUS_FILE, CrashLoop, Healer, RestartPolicy
    from services.runtime.procs import (
        Child,
        ChildDied,
        Supervisor,
        grpc_ready,
        http_ready,
        service_argv,
        tcp_ready,
    )

    console = Console(stderr=True)
    config = config_mod.load(CommonConfig, rest, prog="agentmesh up")
    data_dir = Path(config.data_dir).resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    keys_file, new_key = ensure_default_key(data_dir)
    env = {config_mod.env_name(name): str(value) for name, value in vars(config).items()}
    env["AGENTMESH_DATA_DIR"] = str(data_dir)
    if not os.environ.get("AGENTMESH_API_KEYS"):
        env.setdefault("AGENTMESH_API_KEYS_FILE", str(keys_file))
    targets = {
        "bus": ("tcp", config.bus_sub_addr),
        "coordinator": ("grpc", config.coordinator_addr),
        "planner": ("grpc", config.planner_addr),
        "executor": ("grpc", config.executor_addr),
        "inference": ("grpc", config.inference_addr),
        "gateway": ("http", f"http://{config.gateway_addr}/healthz"),
    }
    make_probe = {"tcp": tcp_ready, "grpc": grpc_ready, "http": http_ready}
    probes = {name: make_probe[kind](target) for name, (kind, target) in targets.items()}
    sup = Supervisor()
    for index, name in enumerate(UP_ORDER):
        child_env = dict(env)
        if config.metrics_port and name not in ("bus", "gateway"):
            # One port each, counted up from the one given: they cannot all bind the same one.
            child_env["AGENTMESH_METRICS_PORT"] = str(config.metrics_port + index)
        else:
            child_env["AGENTMESH_METRICS_PORT"] = "0"
        if name == "planner" and args.agents and args.command == "up":
            child_env["AGENTMESH_AGENTS"] = _agents_spec(args.agents)
        sup.add(Child(name, service_argv(name), probes[name], env=child_env, log_path=logs / f"{name}.log"))
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop["signal"]:
            return
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    try:
        sup.start(deadline_s=args.ready_timeout)
    except (ChildDied, TimeoutError) as exc:
        console.print(f"[red]agentmesh up failed:[/red] {exc}")
        sup.stop()
        return 1
    ready_s = time.monotonic() - started
    key_file = data_dir / "default.key"
    console.print(f"[green]agentmesh is up[/green] in {ready_s:.2f}s (data dir {data_dir})")
    for child in sup.children:
        metrics = child.env.get("AGENTMESH_METRICS_PORT", "0")
        where = f"  metrics http://127.0.0.1:{metrics}/metrics" if metrics != "0" else ""
        console.print(f"  {child.name:<12} pid {child.pid:<8} log {child.log_path}{where}")
    console.print(
        f"  gRPC  {config.coordinator_addr}   HTTP http://{config.gateway_addr}/   bus {config.bus_sub_addr}"
    )
    if new_key:
        console.print(f"  API key for tenant [bold]default[/bold]: {new_key} (kept in {key_file})")
    elif key_file.exists():
        console.print(f"  API key for tenant default is in {key_file}")
    console.print(f"  admin key for `agentmesh keys` and `agentmesh audit` in {data_dir / 'admin.key'}")
    ready = {"ready_s": ready_s, "pids": {c.name: c.pid for c in sup.children}}

    workers_now: dict[str, int] = {}

    def write_ready(workers: dict[str, int] | None = None) -> None:
        # Written again as services are restarted and (with `dev`) as agent workers change.
        if workers is not None:
            workers_now.clear()
            workers_now.update(workers)
        ready["pids"] = {c.name: c.pid for c in sup.children}
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({**ready, "workers": workers_now}))

    policy = RestartPolicy(budget=args.restarts)
    healer = Healer(
        sup,
        policy,
        data_dir / STATUS_FILE,
        say=lambda text: console.print(escape(text), style="yellow"),
        probes={name: {"kind": kind, "target": target} for name, (kind, target) in targets.items()},
        on_restart=write_ready,
    )

    reloader = None
    if args.command == "dev":
        from agentmesh.dev import Reloader

        worker_env = {**env, "AGENTMESH_METRICS_PORT": "0"}
        reloader = Reloader(_agents_spec(args.agents), worker_env, logs, console.print, on_change=write_ready)
        console.print(f"serving {args.agents} from an agent worker; reloading when the files change")
        reloader.start()
    write_ready({c.name: c.pid for c in reloader.workers} if reloader else None)
    exit_code = 0
    while not stop["signal"]:
        if reloader is not None:
            for child in reloader.dead():
                tail = child.log_tail(20)
                console.print(f"[red]{child.name} exited[/red] (the next change starts another)\n{tail}")
            reloader.tick()
        try:
            healer.tick()
        except CrashLoop as exc:
            console.print(f"[red]{exc}[/red]")
            exit_code = 1
            break
        time.sleep(0.1)
    console.print("stopping the mesh ...")
    if reloader is not None:
        reloader.stop()  # first: a worker that leaves tells the coordinator
    codes = sup.stop(grace_s=args.stop_timeout)
    healer.stopped()
    console.print("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()))
    return exit_code


def _agents_spec(spec: str) -> str:
    """Files made absolute: the planner may not share this process's working directory."""
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    return ",".join(str(Path(e).resolve()) if e.endswith(".py") or Path(e).is_file() else e for e in entries)


def cmd_health(args: argparse.Namespace, rest: list[str]) -> int:
    from services.runtime.procs import grpc_ready, http_ready

    if args.kind is None:
        return _mesh_health(Path(args.data_dir), args.json)
    if not args.target:
        print("agentmesh health grpc|http TARGET: a target is needed", file=sys.stderr)
        return 2
    probe = grpc_ready(args.target) if args.kind == "grpc" else http_ready(args.target)
    return 0 if probe() else 1


def _mesh_health(data_dir: Path, as_json: bool) -> int:
    """Each service of the mesh `agentmesh up` runs on `data_dir`: its state, restarts, last exit and
    whether it answers its probe now. Exit 0 only when every one is running and answers."""
    from rich.console import Console
    from rich.table import Table

    from services.runtime.healing import read_status
    from services.runtime.procs import grpc_ready, http_ready, pid_alive, tcp_ready

    status = read_status(data_dir)
    if status is None:
        print(
            f"no mesh status in {data_dir} (is `agentmesh up` running with this --data-dir?)", file=sys.stderr
        )
        return 1
    supervised = pid_alive(int(status.get("supervisor_pid", 0)))
    make_probe = {"tcp": tcp_ready, "grpc": grpc_ready, "http": http_ready}
    services = status["services"]
    healthy = supervised
    for service in services.values():
        probe = service.get("probe") or {}
        answers = bool(probe) and supervised and make_probe[probe["kind"]](probe["target"])()
        service["answers"] = answers
        healthy = healthy and answers and service["state"] == "running"
    if as_json:
        print(json.dumps({"healthy": healthy, "supervised": supervised, "services": services}, indent=2))
        return 0 if healthy else 1
    console = Console()
    title = f"mesh in {data_dir}: " + ("[green]healthy[/green]" if healthy else "[red]not healthy[/red]")
    if not supervised:
        title += " (agentmesh up is not running)"
    table = Table(title=title)
    for column in ("service", "pid", "state", "answers", "restarts", "last exit"):
        table.add_column(column)
    for name, service in services.items():
        when = (
            time.strftime("%H:%M:%S", time.localtime(service["last_exit_at"]))
            if service["last_exit_at"]
            else ""
        )
        table.add_row(
            name,
            str(service["pid"]),
            service["state"],
            "[green]yes[/green]" if service["answers"] else "[red]no[/red]",
            str(service["restarts"]),
            f"{service['last_exit']} {when}".strip(),
        )
    console.print(table)
    return 0 if healthy else 1


def cmd_sandbox(args: argparse.Namespace) -> int:
    """What isolation the executor at args.executor gives on its host (Executor.GetCapabilities)."""

    import grpc
    from google.protobuf.json_format import MessageToDict
    from rich.console import Console
    from rich.table import Table

    from protos.agentmesh.v1 import common_pb2, executor_pb2, executor_pb2_grpc

    async def fetch() -> executor_pb2.Capabilities:
        async with grpc.aio.insecure_channel(args.executor) as channel:
            stub = executor_pb2_grpc.ExecutorStub(channel)
            return await stub.GetCapabilities(executor_pb2.GetCapabilitiesRequest(), timeout=10)

    try:
        caps = asyncio.run(fetch())
    except grpc.aio.AioRpcError as exc:
        print(f"cannot reach the executor at {args.executor}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(MessageToDict(caps, preserving_proto_field_name=True), indent=2))
        return 0
    console = Console()
    levels = ", ".join(caps.isolation_levels) or "none"
    table = Table(title=f"executor {args.executor}: isolation levels {levels}")
    for column in ("protection", "active", "how / why not"):
        table.add_column(column)
    for p in caps.protections:
        table.add_row(p.name, "[green]yes[/green]" if p.active else "[red]no[/red]", p.detail)
    console.print(table)
    repeat_words = {
        common_pb2.REPEAT_SAFETY_SAFE: "yes",
        common_pb2.REPEAT_SAFETY_SANDBOXED: "in full isolation without network",
    }
    tools = Table(title="tools")
    for column in ("tool", "safe to repeat", "what it does"):
        tools.add_column(column)
    for spec in caps.tool_specs:
        tools.add_row(spec.name, repeat_words.get(spec.repeat, "no"), spec.description)
    console.print(tools)
    console.print(f"warm sandboxes kept ready: {caps.warm_sandboxes}")
    return 0


# ---------------------------------------------------------------------------- client verbs


async def _replay(console: Any, client: Any, args: argparse.Namespace) -> int:
    from agentmesh.sdk import strict
    from agentmesh.sdk.loader import load_agents
    from agentmesh.testing.replay import load_journal, replay_journal

    strict.install()
    agents = load_agents(args.agents)
    source = Path(args.source)
    journal = load_journal(source) if source.suffix == ".json" else await client.journal(args.source)
    report = replay_journal(journal, agents)
    if args.json:
        print(json.dumps({**vars(report)}))
    elif report.ok:
        console.print(
            f"[green]ok[/green] {report.task_id} ({report.agent}): {report.decisions} decisions replay"
        )
    else:
        console.print(f"[red]differs[/red] {report.task_id} ({report.agent}): {report.problem}")
        for key, value in report.details.items():
            console.print(f"  {key}: {value}")
    return 0 if report.ok else 1


def _read_input(text: str) -> str:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    json.loads(text)  # fail here, clearly, on bad JSON
    return text


async def _client_call(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agentmesh.client import AgentMeshClient
    from agentmesh.render import print_task, print_tasks
    from services.runtime.errors import AgentMeshError
    from services.runtime.wire import STATE_VALUES, task_to_dict

    console = Console()
    client = AgentMeshClient(args.address, _api_key(args))
    try:
        if args.command == "submit":
            task = await client.submit(
                args.agent,
                None,
                input_json=_read_input(args.input),
                priority=args.priority,
                budget_usd=args.budget,
                idempotency_key=args.idempotency_key or "",
            )
            if not args.watch:
                print_task(console, task, as_json=args.json)
                return 0
            console.print(f"submitted [bold]{task.id}[/bold]")
            return await _watch(console, client, task.id, 0, args.json)
        if args.command == "watch":
            return await _watch(console, client, args.id, args.after, args.json)
        if args.command == "get":
            print_task(console, await client.get(args.id), as_json=args.json)
        elif args.command == "timeline":
            from agentmesh.render import print_timeline

            print_timeline(console, await client.timeline(args.id), as_json=args.json)
        elif args.command == "list":
            state = STATE_VALUES.get(args.state.upper(), -1) if args.state else 0
            if state < 0:
                console.print(f"unknown state {args.state!r}")
                return 2
            reply = await client.list(state=state, limit=args.limit, cursor=args.cursor or "")
            print_tasks(console, list(reply.tasks), reply.next_cursor, as_json=args.json)
        elif args.command == "cancel":
            print_task(console, await client.cancel(args.id), as_json=args.json)
        elif args.command == "input":
            reply = await client.send_input(args.id, json.loads(_read_input(args.data)))
            if args.json:
                print(json.dumps({"delivered": reply.delivered, "task": task_to_dict(reply.task)}))
            else:
                console.print("delivered" if reply.delivered else "queued for the task's next wait")
        elif args.command == "export":
            from agentmesh.testing.replay import dump_journal

            text = dump_journal(await client.journal(args.id))
            if args.out:
                await asyncio.to_thread(Path(args.out).write_text, text + "\n")
                console.print(f"wrote {args.out}")
            else:
                print(text)
        elif args.command == "replay":
            return await _replay(console, client, args)
        elif args.command == "agents":
            agents = (await client.list_agents()).agents
            if args.json:
                from google.protobuf.json_format import MessageToDict

                print(json.dumps([MessageToDict(a, preserving_proto_field_name=True) for a in agents]))
                return 0
            for agent in agents:
                console.print(f"[bold]{agent.name}[/bold]  {agent.description}")
                for served in agent.versions:
                    version = f"v{served.version}" if served.version else "(no version)"
                    console.print(f"  {version:<14} {', '.join(served.workers)}")
        return 0
    except AgentMeshError as exc:
        console.print(f"[red]{exc.code.name}[/red] {exc.reason}: {exc.message}")
        return 1
    finally:
        await client.close()


async def _watch(console: Any, client: Any, task_id: str, after: int, as_json: bool) -> int:
    from agentmesh.render import LiveTaskView

    view = LiveTaskView(console, task_id, as_json=as_json)
    async for event in client.watch(task_id, after):
        view.add(event)
    task = await client.get(task_id)
    view.finish(task)
    from protos.agentmesh.v1 import common_pb2

    return 0 if task.state == common_pb2.TASK_STATE_SUCCEEDED else 1


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentmesh", description="A runtime for long-lived AI agent tasks.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="run the whole mesh here as child processes (Ctrl-C stops it)",
        description="Run bus, coordinator, planner, executor, inference and gateway. "
        "Other flags (see `agentmesh serve coordinator --help`) pass through.",
    )
    dev = sub.add_parser(
        "dev",
        help="run the mesh here with your agents, reloaded when their files change",
        description="As `up`, with --agents served by an agent worker that is replaced when the files "
        "change; workers of versions still in use by tasks keep running (docs/agents.md).",
    )
    for command in (up, dev):
        command.add_argument("--ready-timeout", type=float, default=60.0)
        command.add_argument("--stop-timeout", type=float, default=15.0)
        command.add_argument("--ready-file", default="", help="write readiness time and pids as JSON here")
        command.add_argument(
            "--restarts",
            type=int,
            default=RESTART_BUDGET,
            help="restarts of one service within 2 minutes before the mesh stops as a crash loop "
            "(0: stop the mesh when any service dies)",
        )
    up.add_argument(
        "--agents",
        default="",
        help="your SDK agents, served by the planner beside the built-in ones: module paths or .py files, "
        "comma-separated (docs/agents.md)",
    )
    dev.add_argument("--agents", required=True, help="module paths or .py files, comma-separated")

    serve = sub.add_parser("serve", help="run one service", add_help=False)
    serve.add_argument("service", choices=sorted(SERVICES))
    sub.add_parser(
        "worker",
        help="serve your agents from this process, registered with the coordinator (--agents FILE.py)",
        add_help=False,
    )

    health = sub.add_parser(
        "health",
        help="the mesh's services, their restarts and whether they answer; or probe one service",
        description="Without arguments: every service of the mesh `agentmesh up` runs on --data-dir. "
        "With KIND TARGET: probe that one service. Exit 0 when healthy.",
    )
    health.add_argument("kind", nargs="?", choices=("grpc", "http"))
    health.add_argument("target", nargs="?", help="HOST:PORT for grpc, a URL for http")
    health.add_argument("--data-dir", default=str(_default_data_dir()))
    health.add_argument("--json", action="store_true", help="machine-readable output")

    sandbox = sub.add_parser("sandbox", help="show what isolation the executor gives on its host")
    sandbox.add_argument("--executor", default=os.environ.get("AGENTMESH_EXECUTOR_ADDR", "127.0.0.1:50053"))
    sandbox.add_argument("--json", action="store_true", help="machine-readable output")

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--address", default=os.environ.get("AGENTMESH_COORDINATOR_ADDR", "127.0.0.1:50051"))
        p.add_argument("--api-key", default=None, help="default: $AGENTMESH_API_KEY or DATA_DIR/default.key")
        p.add_argument("--data-dir", default=str(_default_data_dir()))
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    submit = client_parser("submit", "submit a task")
    submit.add_argument("agent")
    submit.add_argument("--input", required=True, help="JSON, or @FILE")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--budget", type=float, default=0.0, help="USD")
    submit.add_argument("--idempotency-key", default="")
    submit.add_argument("--watch", action="store_true", help="follow it until it finishes")
    watch = client_parser("watch", "follow a task's events live")
    watch.add_argument("id")
    watch.add_argument("--after", type=int, default=0, help="resume after this event seq")
    get = client_parser("get", "show a task")
    get.add_argument("id")
    timeline = client_parser("timeline", "where a task's time went: queue, decisions, each action attempt")
    timeline.add_argument("id")
    lst = client_parser("list", "list tasks, newest first")
    lst.add_argument("--state", default="")
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--cursor", default="")
    cancel = client_parser("cancel", "cancel a task")
    cancel.add_argument("id")
    give = client_parser("input", "send input to a task waiting for it")
    give.add_argument("id")
    give.add_argument("data", help="JSON, or @FILE")
    client_parser("agents", "list the agents the planner offers")
    export = client_parser("export", "write a task's journal (its decisions and results) as JSON")
    export.add_argument("id")
    export.add_argument("--out", default="", help="a file (default: standard output)")
    replay = client_parser(
        "replay", "replay a task's journal against agent code here: would a deploy break it?"
    )
    replay.add_argument("source", help="a task id (fetched from the coordinator) or an exported .json file")
    replay.add_argument(
        "--agents", required=True, help="the code: module paths or .py files, comma-separated"
    )
    from agentmesh import admin_cli

    admin_cli.add_parsers(sub, _default_data_dir)
    from agentmesh import debug_cli

    debug_cli.add_parsers(sub, _default_data_dir)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["serve"]:
        args, rest = parser.parse_known_args(argv[:2])
        return cmd_serve(args, argv[2:])
    if argv[:1] == ["worker"]:
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        from services.planner.worker import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] in (["up"], ["dev"]):
        args, rest = parser.parse_known_args(argv)
        return cmd_up(args, rest)
    args = parser.parse_args(argv)
    if args.command == "health":
        return cmd_health(args, [])
    if args.command == "sandbox":
        return cmd_sandbox(args)
    if args.command in ("keys", "audit"):
        from agentmesh import admin_cli

        return admin_cli.run(args)
    if args.command == "debug":
        from agentmesh import debug_cli

        return debug_cli.run(args)

    try:
        return asyncio.run(_client_call(args))
    except json.JSONDecodeError as exc:
        print(f"invalid JSON: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
