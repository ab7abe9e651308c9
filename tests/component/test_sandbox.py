"""The hostile suite: model-written code that attacks the executor's sandbox. Every case must be
contained, end with a clear result, leave no process and no file behind, and the executor must keep
serving. Runs the real Executor (bubblewrap, cgroups, seccomp, tmpfs) in this process; cases that
need a protection this host lacks are skipped with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protos.agentmesh.v1 import common_pb2 as pb
from services.executor.core import Executor, ExecutorLimits
from services.executor.sandbox import SandboxConfig
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.procs import pid_alive

SECRET = "agentmesh-test-secret-7f3a9c"
MiB = 1 << 20


# Every case runs twice: in a warm sandbox (started ahead by the pool, what most actions get) and
# in one the action starts itself (actions the pool does not fit: network, contained, a smaller
# workspace).
@pytest.fixture(scope="module", params=["warm", "cold"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    # A secret in the executor's own environment, which no action may read.
    os.environ["AGENTMESH_TEST_SECRET"] = SECRET
    limits = ExecutorLimits(
        memory_bytes=256 * MiB,
        pids=64,
        workspace_bytes=32 * MiB,
        max_output_bytes=MiB,
        warm_sandboxes=2 if request.param == "warm" else 0,
    )
    ex = Executor(limits, f"hostile-{request.param}-{os.getpid()}")
    try:
        yield ex
    finally:
        ex.close()
        os.environ.pop("AGENTMESH_TEST_SECRET", None)


@pytest.fixture(autouse=True)
def full_isolation(executor: Executor) -> None:
    if "full" not in executor.isolation_levels():
        missing = executor.sandbox.missing(
            "full", False, {p.name for p in executor.protections() if p.active}
        )
        pytest.skip(f"this host cannot give full isolation: missing {', '.join(missing)}")


def run(
    executor: Executor, tool: str, args: dict[str, Any], timeout_s: float = 20, **fields: Any
) -> pb.ActionResult:
    action = pb.ExecAction(tool=tool, args_json=json.dumps(args), **fields)
    action_id = f"a{time.time_ns()}"
    return asyncio.run(asyncio.wait_for(executor.run("t", action_id, 1, action, timeout_s, _ignore), 120))


def shell(executor: Executor, command: str, timeout_s: float = 20, **fields: Any) -> pb.ActionResult:
    return run(executor, "shell", {"command": command}, timeout_s, **fields)


def _ignore(stream: str, data: bytes) -> None:
    return None


def survivors(token: str) -> list[int]:
    """Processes anywhere on the host whose command line carries `token`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def assert_clean(executor: Executor, token: str = "") -> None:
    """No survivor, no action cgroup, no workspace left (only the pool's ready sandboxes, which no
    action has had); the executor still runs actions."""
    if token:
        assert not survivors(token), f"survivors: {survivors(token)}"
    assert executor.cgroups is not None
    cgroup_names = {p.name for p in executor.cgroups.kill_base.iterdir() if p.is_dir()}
    workspace_names = {p.name for p in executor.workspaces.base.iterdir()}
    # Asked after listing: a slot being made is in names() before its directories exist.
    pool = executor.pool.names() if executor.pool is not None else set()
    assert cgroup_names <= pool and workspace_names <= pool, (cgroup_names, workspace_names, pool)
    assert shell(executor, "echo still-serving").stdout == "still-serving\n"


def test_runs_as_an_unprivileged_uid_with_only_its_workspace(executor: Executor) -> None:
    result = shell(executor, "id -u; pwd; ls /; touch mine && ls -l mine | cut -d' ' -f3")
    uid, cwd, *rest = result.stdout.split("\n")
    assert result.status == pb.ACTION_STATUS_OK, result.stderr
    assert uid == str(executor.sandbox.run_as()[0]) and uid != "0"
    assert cwd == "/workspace"
    assert "root" not in rest and "home" not in rest and "var" not in rest


def test_fork_bomb_is_contained_by_the_pids_limit(executor: Executor) -> None:
    token = "forkbomb-81724"
    result = shell(executor, f": {token}; b() {{ b | b & }}; b", timeout_s=4)
    assert result.status in (pb.ACTION_STATUS_TIMED_OUT, pb.ACTION_STATUS_FAILED, pb.ACTION_STATUS_OK)
    assert_clean(executor, token)


def test_fork_bomb_whose_children_call_setsid(executor: Executor) -> None:
    code = (
        "import os, time  # setsid-bomb-55120\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    result = run(executor, "python", {"code": code}, timeout_s=3)
    assert result.status == pb.ACTION_STATUS_TIMED_OUT
    assert_clean(executor, "setsid-bomb-55120")


def test_memory_hog_is_stopped_at_its_memory_limit(executor: Executor) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result = run(executor, "python", {"code": code}, limits=pb.ResourceLimits(memory_bytes=96 * MiB))
    assert result.status == pb.ACTION_STATUS_FAILED
    assert result.error.reason == "MEMORY_LIMIT", result.error
    assert result.cost.peak_memory_bytes <= 96 * MiB
    assert_clean(executor)


def test_disk_filler_hits_the_workspace_size(executor: Executor) -> None:
    if not executor.workspaces.tmpfs:
        pytest.skip("no tmpfs workspaces here (they need root)")
    result = shell(executor, "dd if=/dev/zero of=fill bs=1M count=200 2>&1; ls -l fill")
    assert result.status == pb.ACTION_STATUS_OK  # ls ran: the shell survived a full disk
    assert "No space left on device" in result.stdout
    size = int(result.stdout.strip().split("\n")[-1].split()[4])
    assert size <= 32 * MiB
    assert_clean(executor)


def test_cpu_spin_is_killed_at_its_cpu_seconds(executor: Executor) -> None:
    started = time.monotonic()
    result = run(
        executor,
        "python",
        {"code": "while True: pass"},
        timeout_s=30,
        limits=pb.ResourceLimits(cpu_seconds=1),
    )
    assert result.status == pb.ACTION_STATUS_FAILED and result.error.reason == "CPU_LIMIT", result.error
    assert time.monotonic() - started < 15
    assert_clean(executor)


def test_cpu_quota_throttles_a_spinner(executor: Executor) -> None:
    code = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
    result = run(executor, "python", {"code": code}, limits=pb.ResourceLimits(cpu_millicores=200))
    assert result.status == pb.ACTION_STATUS_OK
    # One second of wall time at a fifth of a core: far less than a second of CPU.
    assert result.cost.cpu_ms < 600, result.cost


def test_a_gigabyte_of_output_is_capped_and_flagged(executor: Executor) -> None:
    result = shell(executor, "head -c 1000000000 /dev/zero | tr '\\0' x", timeout_s=60)
    assert result.truncated
    assert len(result.stdout) <= MiB
    assert_clean(executor)


def test_a_process_ignoring_sigterm_is_killed_at_the_timeout(executor: Executor) -> None:
    token = "ignore-term-66121"
    started = time.monotonic()
    result = shell(executor, f"trap '' TERM; sleep 66121 # {token}", timeout_s=1)
    assert result.status == pb.ACTION_STATUS_TIMED_OUT
    assert time.monotonic() - started < 5
    assert_clean(executor, "66121")


def test_a_double_forked_daemon_dies_with_its_action(executor: Executor) -> None:
    result = shell(executor, "(setsid sh -c 'sleep 77312' > /dev/null 2>&1 &) ; echo parent-done")
    assert result.status == pb.ACTION_STATUS_OK and result.stdout == "parent-done\n"
    assert_clean(executor, "77312")


def test_no_connection_to_the_hosts_loopback(executor: Executor) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('refused', e)\n"
    )
    try:
        result = run(executor, "python", {"code": code})
        assert result.stdout.startswith("refused"), result.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_host_secrets_are_out_of_reach(executor: Executor, tmp_path: Path) -> None:
    secret_file = tmp_path / "data" / "agentmesh.db"
    secret_file.parent.mkdir()
    secret_file.write_text(SECRET)
    command = (
        "cat /etc/shadow; ls /root; "
        f"cat {secret_file}; "
        "cat /proc/1/environ; cat /proc/*/environ; env; "
        f"cat /proc/{os.getpid()}/environ"
    )
    result = shell(executor, command)
    assert SECRET not in result.stdout + result.stderr
    assert "root:" not in result.stdout
    assert_clean(executor)


def test_writes_outside_the_workspace_go_nowhere(executor: Executor) -> None:
    marker = f"agentmesh-escape-{os.getpid()}"
    result = shell(
        executor,
        f"echo x > /usr/{marker}; echo x > /{marker}; echo x > /tmp/{marker} && echo tmp-ok; "
        f"echo x > ../{marker}; mkdir -p /etc/x 2>&1; echo done",
    )
    assert result.stdout.endswith("done\n")
    assert "tmp-ok" in result.stdout  # its private /tmp is writable...
    for place in ("/usr", "/", "/tmp", "/etc"):  # ...and none of it reached the host
        assert not (Path(place) / marker).exists()
    assert_clean(executor)


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "nul\x00byte", "", "a//b"])
def test_unsafe_declared_file_names_are_refused(executor: Executor, name: str) -> None:
    with pytest.raises(InvalidArgument):
        run(executor, "shell", {"command": "true"}, files={name: b"x"})
    with pytest.raises(InvalidArgument):
        run(executor, "shell", {"command": "true"}, output_files=[name])
    assert_clean(executor)


@pytest.mark.parametrize("files", [{"a": b"x", "a/b": b"y"}, {"big": b"x" * (40 * MiB)}])
def test_declared_files_that_cannot_be_written_fail_clearly(executor: Executor, files: dict) -> None:
    # A file where a directory must go; more than the 32 MiB workspace holds.
    with pytest.raises(FailedPrecondition) as refused:
        run(executor, "shell", {"command": "true"}, files=files)
    assert refused.value.reason == "WORKSPACE_ERROR"
    assert_clean(executor)


def test_an_output_symlink_out_of_the_workspace_is_not_followed(executor: Executor) -> None:
    result = shell(
        executor,
        "ln -s /etc/passwd passwd; ln -s /etc dir; ln -s /dev/zero zero; mkfifo fifo; echo ok > real",
        output_files=["passwd", "dir/passwd", "zero", "fifo", "real"],
    )
    assert result.status == pb.ACTION_STATUS_OK, result.stderr
    assert dict(result.artifacts) == {"real": b"ok\n"}


def test_a_report_file_swapped_for_a_symlink_is_not_read(executor: Executor) -> None:
    # The tests replace pytest's report with a link to /dev/zero: read as root, it would never end.
    conftest = b"import os\nos.symlink('/dev/zero', '.agentmesh-junit.xml')\n"
    files = {"conftest.py": conftest, "test_b.py": b"def test_y():\n    pass\n"}
    result = run(executor, "pytest", {}, files=files, timeout_s=30)
    assert "no report" in json.loads(result.output_json)["error"]
    assert_clean(executor)


def test_namespaces_and_tracing_are_refused_by_seccomp(executor: Executor) -> None:
    if executor.sandbox.seccomp_program is None:
        pytest.skip(executor.sandbox.seccomp_detail)
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
        "print('ptrace', libc.ptrace(16, 1, 0, 0), ctypes.get_errno())\n"  # PTRACE_ATTACH to pid 1
        "print('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())\n"
    )
    result = run(executor, "python", {"code": code})
    assert result.stdout.split("\n")[:3] == ["unshare -1 1", "ptrace -1 1", "mount -1 1"], result.stdout


def test_a_hanging_pytest_is_stopped(executor: Executor) -> None:
    tests = b"import time\ndef test_hangs():\n    time.sleep(88123)\n"
    result = run(executor, "pytest", {}, files={"test_hang.py": tests}, timeout_s=3)
    assert result.status == pb.ACTION_STATUS_TIMED_OUT
    assert_clean(executor, "88123")


def test_a_scan_of_a_file_built_to_be_slow_is_stopped(executor: Executor) -> None:
    slow = b"".join(b"x%d = eval(input()) + '%d'\n" % (i, i) for i in range(150_000))
    started = time.monotonic()
    result = run(executor, "scan", {}, files={"slow.py": slow}, timeout_s=2)
    assert result.status == pb.ACTION_STATUS_TIMED_OUT
    assert time.monotonic() - started < 10
    assert_clean(executor)


def test_pytest_results_are_structured(executor: Executor) -> None:
    files = {
        "calc.py": b"def add(a, b):\n    return a + b\n",
        "test_calc.py": (
            b"from calc import add\n"
            b"def test_add():\n    assert add(2, 3) == 5\n"
            b"def test_wrong():\n    assert add(2, 2) == 5, 'two and two'\n"
        ),
    }
    result = run(executor, "pytest", {}, files=files, timeout_s=60)
    report = json.loads(result.output_json)
    assert (report["passed"], report["failed"]) == (1, 1)
    failed = next(t for t in report["tests"] if t["outcome"] == "failed")
    assert failed["name"].endswith("test_wrong") and "two and two" in failed["message"]


def test_scan_finds_the_classic_mistakes(executor: Executor) -> None:
    code = (
        b"import subprocess\n"
        b"password = 'hunter2'\n"
        b"value = eval(input())\n"
        b"subprocess.call(value, shell=True)\n"
    )
    result = run(executor, "scan", {}, files={"app.py": code}, timeout_s=60)
    report = json.loads(result.output_json)
    findings = report["findings"]
    tests = {f["test_id"] for f in findings}
    assert {"B105", "B307", "B602"} <= tests, findings
    assert all(f["file"].endswith("app.py") and f["line"] and f["cwe"] for f in findings)
    if executor.semgrep:  # the toolchain has it: our rules find the same mistakes
        assert report["scanners"] == ["bandit", "semgrep"] and not report.get("semgrep_errors"), report
        by_semgrep = {f["test_id"] for f in findings if f["tool"] == "semgrep"}
        assert {
            "agentmesh.python.eval-of-input",
            "agentmesh.python.subprocess-shell-true",
            "agentmesh.python.hardcoded-password",
        } <= by_semgrep, findings
        assert report["high"] >= 3  # shell=True from both scanners, eval from semgrep


def test_an_action_the_host_cannot_isolate_is_refused_unless_permissive(tmp_path: Path) -> None:
    strict = Executor(ExecutorLimits(sandbox=SandboxConfig(bwrap="off")), f"nobwrap-{os.getpid()}")
    try:
        assert "full" not in strict.isolation_levels()
        with pytest.raises(FailedPrecondition) as refused:
            shell(strict, "true")
        assert "mount-namespace" in refused.value.message and "permissive" in refused.value.message
        # What it can give, it gives: a contained action runs.
        assert shell(strict, "echo ok", isolation="contained").stdout == "ok\n"
    finally:
        strict.close()
    lax = Executor(
        ExecutorLimits(sandbox=SandboxConfig(bwrap="off"), isolation_policy="permissive"),
        f"lax-{os.getpid()}",
    )
    try:
        assert shell(lax, "echo ran").stdout == "ran\n"
    finally:
        lax.close()


def test_without_cgroups_actions_still_run_and_their_tree_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host (or container) with no cgroups and no bubblewrap: process-group containment, under an
    explicitly permissive policy."""
    from services.executor import cgroups

    monkeypatch.setattr(cgroups.CgroupRoot, "probe", classmethod(lambda cls, instance: None))
    bare = Executor(
        ExecutorLimits(sandbox=SandboxConfig(bwrap="off"), isolation_policy="permissive"),
        f"bare-{os.getpid()}",
    )
    try:
        assert bare.containment == "process-group"
        result = shell(bare, "(setsid sh -c 'sleep 99331' > /dev/null 2>&1 &); echo ran")
        assert result.status == pb.ACTION_STATUS_OK and result.stdout == "ran\n"
        assert result.cost.cpu_ms >= 0 and result.cost.peak_memory_bytes == 0
        deadline = time.monotonic() + 5
        while survivors("99331") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not survivors("99331")
    finally:
        bare.close()


def test_a_resent_action_joining_a_run_whose_caller_left_runs_anew(executor: Executor) -> None:
    """A coordinator that died and came back sends its in-flight actions again; one may arrive while
    the executor is still killing the run the dead session started. It must run, not inherit the
    cancellation."""
    action = pb.ExecAction(tool="shell", args_json=json.dumps({"command": "sleep 0.5; echo done"}))

    async def go() -> pb.ActionResult:
        first = asyncio.ensure_future(executor.run("t", "resent", 1, action, 20, _ignore))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(executor.run("t", "resent", 1, action, 20, _ignore))
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    result = asyncio.run(asyncio.wait_for(go(), 60))
    assert result.status == pb.ACTION_STATUS_OK and result.stdout == "done\n", result
    assert_clean(executor)


# -- warm sandboxes ------------------------------------------------------------------------------


def _warm_executor(name: str, **limits: Any) -> Executor:
    ex = Executor(ExecutorLimits(warm_sandboxes=2, **limits), f"{name}-{os.getpid()}")
    if ex.pool is None:
        ex.close()
        pytest.skip("no warm sandboxes on this host (they need full isolation)")
    return ex


# Shell syntax in an action's code: the warm sandbox's launch script must pass it on untouched.
TRICKY = "it's $HOME `x` \\ \" $(id) ; exit 9"


def _wait_ready(ex: Executor, count: int) -> None:
    assert ex.pool is not None
    deadline = time.monotonic() + 20
    while len(ex.pool.pids()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(ex.pool.pids()) >= count


def test_a_warm_sandbox_runs_the_action_with_its_own_limits_and_identity(executor: Executor) -> None:
    if executor.pool is None:
        pytest.skip("the cold executor")
    _wait_ready(executor, 1)
    taken = executor.pool.taken
    code = (
        "import os, resource\n"
        "print(resource.getrlimit(resource.RLIMIT_CPU))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "print(resource.getrlimit(resource.RLIMIT_FSIZE))\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE))\n"
        "print(os.environ['AGENTMESH_TASK_ID'], os.environ['AGENTMESH_ATTEMPT'])\n"
        "print(os.readlink('/proc/self/fd/0'))\n"
        "print(open('data/in.txt').read())\n"
        f"print({TRICKY!r})\n"
    )
    result = run(executor, "python", {"code": code}, timeout_s=7, files={"data/in.txt": b"declared"})
    assert result.status == pb.ACTION_STATUS_OK, result.stderr
    assert executor.pool.taken == taken + 1
    lines = result.stdout.split("\n")
    assert lines[:8] == [
        "(7, 8)",  # CPU seconds: the timeout, SIGKILL a second later
        "(1024, 1024)",
        f"({64 * MiB}, {64 * MiB})",
        "(0, 0)",
        "t 1",
        "/dev/null",
        "declared",
        TRICKY,  # quoting survived the shell
    ], result.stdout
    # The start-up of the sandbox is not the action's cost; a few MB of its own memory are.
    assert 0 < result.cost.peak_memory_bytes < 64 * MiB
    assert_clean(executor)


def test_a_dead_warm_sandbox_is_passed_over_and_removed() -> None:
    ex = _warm_executor("warm-dead")
    try:
        _wait_ready(ex, 2)
        assert ex.pool is not None
        dead = ex.pool.pids()
        for pid in dead:
            os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in dead) and time.monotonic() < deadline:
            time.sleep(0.01)
        result = shell(ex, "echo fine")
        assert result.status == pb.ACTION_STATUS_OK and result.stdout == "fine\n"
        assert_clean(ex)
    finally:
        ex.close()


def test_closing_the_executor_kills_its_warm_sandboxes() -> None:
    ex = _warm_executor("warm-close")
    try:
        _wait_ready(ex, 2)
        assert ex.pool is not None and ex.cgroups is not None
        # Each slot, once it has started: bubblewrap outside and in, and the waiting shell.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            members = [pid for tree in ex.pool.ready_trees() for pid in tree.pids()]
            if len(members) >= 6:
                break
            time.sleep(0.01)
        assert len(members) >= 6, members
    finally:
        ex.close()
    deadline = time.monotonic() + 5  # SIGKILL is delivered, not waited for
    while any(pid_alive(pid) for pid in members) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [pid for pid in members if pid_alive(pid)]
    assert not ex.workspaces.base.exists() and not ex.cgroups.kill_base.exists()


def test_actions_the_pool_does_not_fit_start_cold() -> None:
    ex = _warm_executor("warm-fit", workspace_bytes=32 * MiB)
    try:
        _wait_ready(ex, 2)
        assert ex.pool is not None
        taken = ex.pool.taken
        smaller = shell(ex, "df -k . | tail -1", limits=pb.ResourceLimits(workspace_bytes=8 * MiB))
        assert smaller.status == pb.ACTION_STATUS_OK and int(smaller.stdout.split()[1]) <= 8 * 1024
        assert shell(ex, "echo net", network=True).stdout == "net\n"
        assert shell(ex, "echo contained", isolation="contained").stdout == "contained\n"
        assert ex.pool.taken == taken
        assert shell(ex, "echo warm").stdout == "warm\n" and ex.pool.taken == taken + 1
        assert_clean(ex)
    finally:
        ex.close()
