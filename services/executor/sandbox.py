"""What isolation this host gives an action, and the command line that gives it.

An action runs as: the cgroup join (cgroups.py) -> `prlimit` (rlimits) -> `setpriv` (drop to the
sandbox's unprivileged uid, no capabilities, no_new_privs) -> `bwrap` (new mount, pid, ipc, uts, user,
cgroup and network namespaces; only the toolchain bound read-only; the workspace at /workspace; a tmpfs
/tmp; the seccomp filter) -> the tool. Each part is probed once at start; `protections()` says what is
active and why not, and `missing()` names what an action requires but cannot have here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.executor import seccomp

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
SHARED = "/shared"
LEVELS = ("full", "contained")
# What each isolation level needs from the host (network-namespace too when the action is offline).
REQUIRED = {
    "full": (
        "cgroup-kill", "memory-limit", "pids-limit", "rlimits", "unprivileged-uid", "no-new-privs",
        "mount-namespace", "pid-namespace",
    ),
    "contained": ("cgroup-kill", "memory-limit", "pids-limit", "rlimits"),
}  # fmt: skip
# Read-only binds of the host's /etc that programs need to start (the loader's cache, Debian's
# alternatives symlinks, the public CA certificates some tools load even offline, semgrep among them)
# and, for actions allowed on the network, to resolve names.
ETC_ALWAYS = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime", "/etc/ssl", "/etc/ca-certificates")
ETC_NETWORK = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf")


@dataclass(frozen=True)
class Protection:
    name: str
    active: bool
    detail: str


@dataclass(frozen=True)
class SandboxConfig:
    bwrap: str = ""  # path; "" finds it on PATH; "off" turns filesystem/pid isolation off
    uid: int = 65534
    gid: int = 65534
    tmp_bytes: int = 64 << 20
    # A host directory bound read-write at SHARED in every sandbox: actions can see each other's files
    # there, so it is off unless the operator names one (a cache, a drop box for results).
    shared_dir: str = ""


class Sandbox:
    def __init__(self, config: SandboxConfig, python: str, probe_dir: Path) -> None:
        self.config = config
        self.python = python
        self.root = os.geteuid() == 0
        self.setpriv = shutil.which("setpriv") if self.root else None
        self.unshare = _probe_unshare()
        self.seccomp_program, self.seccomp_detail = seccomp.build()
        self.toolchain = _toolchain_dirs(python)
        self.bwrap: str | None = None
        self.bwrap_detail = "turned off by configuration"
        if config.bwrap != "off":
            self.bwrap = config.bwrap or shutil.which("bwrap")
            self.bwrap_detail = "bubblewrap not installed (Debian package bubblewrap)"
            if self.bwrap is not None:
                error = self._probe_bwrap(probe_dir)
                if error:
                    self.bwrap_detail = f"bubblewrap does not work here: {error}"
                    self.bwrap = None
                else:
                    self.bwrap_detail = f"bubblewrap {self.bwrap}"

    # -- what the host gives -------------------------------------------------------------------

    @property
    def drops_uid(self) -> bool:
        """Actions run as a uid that is not root: ours already, or setpriv drops root to config.uid."""
        return not self.root or self.setpriv is not None

    def run_as(self) -> tuple[int, int]:
        return self.uid_for(self.config)

    @staticmethod
    def uid_for(config: SandboxConfig) -> tuple[int, int]:
        """The uid and gid actions run as: the configured ones when we are root, else our own."""
        return (config.uid, config.gid) if os.geteuid() == 0 else (os.getuid(), os.getgid())

    def protections(self) -> list[Protection]:
        bwrap = self.bwrap is not None
        uid, _ = self.run_as()
        if self.root:
            uid_detail = f"setpriv to uid {uid}" if self.setpriv else "setpriv missing: actions run as root"
        else:
            uid_detail = f"the executor's own uid {uid}"
        return [
            Protection(
                "mount-namespace",
                bwrap,
                self.bwrap_detail + (": toolchain read-only, no host files" if bwrap else ""),
            ),
            Protection("pid-namespace", bwrap, self.bwrap_detail),
            Protection(
                "network-namespace",
                bwrap or self.unshare is not None,
                "bubblewrap" if bwrap else ("unshare --net" if self.unshare else "no network namespaces"),
            ),
            Protection("unprivileged-uid", self.drops_uid, uid_detail),
            Protection(
                "no-new-privs",
                bwrap or self.setpriv is not None,
                "setpriv/bubblewrap set it" if bwrap or self.setpriv else "neither setpriv nor bubblewrap",
            ),
            Protection("seccomp", bwrap and self.seccomp_program is not None, self._seccomp_detail()),
        ]

    def _seccomp_detail(self) -> str:
        if self.bwrap is None:
            return "needs bubblewrap to apply it"
        return self.seccomp_detail

    def shared_path(self, level: str) -> str:
        """Where an action at `level` finds the operator's shared directory ('' when there is none)."""
        if not self.config.shared_dir:
            return ""
        return SHARED if level == "full" and self.bwrap is not None else self.config.shared_dir

    def missing(self, level: str, network: bool, active: set[str]) -> list[str]:
        wanted = list(REQUIRED[level])
        if not network:
            wanted.append("network-namespace")
        return [name for name in wanted if name not in active]

    def _probe_bwrap(self, probe_dir: Path) -> str:
        """'' when a real sandboxed run of the toolchain's Python, in a workspace where the executor
        makes them, works; else what went wrong."""
        probe = probe_dir / "probe"
        try:
            probe.mkdir(mode=0o700, exist_ok=True)
            if self.root:
                os.chown(probe, *self.run_as())
            argv = self.argv("full", network=False, workspace=probe, seccomp_fd=None)
            done = subprocess.run(
                [*argv, self.python, "-c", "pass"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        return "" if done.returncode == 0 else done.stderr.decode(errors="replace").strip()[:300]

    # -- the command line ----------------------------------------------------------------------

    def argv(self, level: str, network: bool, workspace: Path, seccomp_fd: int | None) -> list[str]:
        """The prefix that runs a tool at `level` (everything after cgroups and rlimits). bwrap runs
        as the sandbox uid, so that uid must be able to walk the host path to the workspace."""
        prefix: list[str] = []
        if self.root and self.setpriv is not None:
            uid, gid = self.run_as()
            prefix = [
                self.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
            ]  # fmt: skip
        if level == "contained" or self.bwrap is None:
            if not network and self.unshare is not None:
                # unshare needs root for a plain net namespace: before the uid drop.
                prefix = [*self.unshare, *prefix]
            return prefix
        return [*prefix, *self._bwrap(network, workspace, seccomp_fd)]

    def _bwrap(self, network: bool, workspace: Path, seccomp_fd: int | None) -> list[str]:
        args = [
            self.bwrap or "bwrap", "--die-with-parent", "--new-session", "--unshare-all",
            "--unshare-user", "--disable-userns", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(self.config.tmp_bytes), "--tmpfs", "/tmp",
        ]  # fmt: skip
        if network:
            args.append("--share-net")
        for path in ETC_ALWAYS + (ETC_NETWORK if network else ()):
            if os.path.exists(path):
                args += ["--ro-bind", path, path]
        for directory in self.toolchain:
            args += ["--ro-bind", directory, directory]
        if self.config.shared_dir:
            args += ["--bind", self.config.shared_dir, SHARED]
        args += ["--bind", str(workspace), WORKSPACE, "--chdir", WORKSPACE]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        return [*args, "--"]


def _probe_unshare() -> list[str] | None:
    """The unshare prefix that gives a process an empty network namespace here, if any."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "--net", "--"], [unshare, "--user", "--map-root-user", "--net", "--"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0:
                return prefix
    return None


def _toolchain_dirs(python: str) -> list[str]:
    """Directories the tools' Python needs that are not under /usr: its venv and its base install."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    dirs = []
    for prefix in dict.fromkeys(out):
        if prefix and not (prefix == "/usr" or prefix.startswith("/usr/")):
            dirs.append(prefix)
    return dirs
