"""Action workspaces: a fresh directory per action, a size-capped tmpfs where the host allows it, owned
by the sandbox's uid, holding only the declared files; and safe reads of what the action left there.

Everything read back out (artifacts, JUnit and bandit reports) is read as the executor, which may be
root, from a directory the action controlled: a name may have become a symlink to /etc/shadow, a FIFO
or /dev/zero. `read_inside` refuses anything but a regular file inside the workspace, within a cap.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import stat
from pathlib import Path

from services.runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(target: Path, size: int, uid: int, gid: int) -> None:
    options = f"size={size},mode=0700,uid={uid},gid={gid}".encode()
    if _libc().mount(b"tmpfs", str(target).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root` (mountinfo escapes spaces as \\040)."""
    found = []
    prefix = str(root.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return found


def unmount(target: Path) -> None:
    if _libc().umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def check_names(names: list[str], what: str) -> None:
    for name in names:
        parts = name.split("/")
        if not name or name.startswith("/") or "\x00" in name or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(
                f"unsafe {what} name {name!r}: relative paths without '..' only", reason="UNSAFE_PATH"
            )


class Workspaces:
    """`<root>/agentmesh-ws-<instance>/<action>`: tmpfs mounts when `tmpfs` is on (root only)."""

    def __init__(self, root: str, instance: str, uid: int, gid: int, want_tmpfs: bool) -> None:
        base = Path(root or os.environ.get("TMPDIR", "/tmp"))
        self.base = base / f"agentmesh-ws-{re.sub(r'[^A-Za-z0-9_.-]', '_', instance)}"
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        self.uid, self.gid = uid, gid
        self.tmpfs = want_tmpfs and self._probe_tmpfs()

    def _probe_tmpfs(self) -> bool:
        probe = self.base / ".probe"
        try:
            probe.mkdir(exist_ok=True)
            _mount_tmpfs(probe, 1 << 20, self.uid, self.gid)
            unmount(probe)
            return True
        except OSError as exc:
            log.info("no tmpfs workspaces: %s", exc)
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()

    def make(self, name: str, size: int, files: dict[str, bytes]) -> Path:
        path = self.base / re.sub(r"[^A-Za-z0-9_.#-]", "_", name)[:200]
        path.mkdir(mode=0o700)
        try:
            if self.tmpfs:
                _mount_tmpfs(path, size, self.uid, self.gid)
            else:
                os.chown(path, self.uid, self.gid)
            self.fill(path, files)
        except BaseException:
            self.remove(path)
            raise
        return path

    def fill(self, path: Path, files: dict[str, bytes]) -> None:
        """Write the declared files (names already checked) into a workspace, owned by the sandbox's
        uid. A warm workspace is filled just before its action starts, while nothing runs in it."""
        for rel, content in files.items():
            target = path / rel
            for parent in reversed(target.relative_to(path).parents[:-1]):
                directory = path / parent
                if not directory.exists():
                    directory.mkdir()
                    os.chown(directory, self.uid, self.gid)
            target.write_bytes(content)
            os.chown(target, self.uid, self.gid)

    def remove(self, path: Path) -> None:
        if os.path.ismount(path):
            try:
                unmount(path)
            except OSError as exc:
                log.warning("%s", exc)
        shutil.rmtree(path, ignore_errors=True)

    def reap_leftovers(self) -> int:
        """Workspaces a crashed executor left: unmounted and removed. Returns how many."""
        count = 0
        for child in self.base.iterdir():
            if child.is_dir():
                self.remove(child)
                count += 1
        return count

    def close(self) -> None:
        self.reap_leftovers()
        with contextlib.suppress(OSError):
            self.base.rmdir()


def read_inside(workspace: Path, name: str, cap: int) -> bytes | None:
    """The bytes of regular file `name` in `workspace`, or None: missing, not a regular file, over
    `cap`, or reached through a symlink anywhere along its path."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        directory = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        parts = name.split("/")
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = nxt
        fd = os.open(parts[-1], flags, dir_fd=directory)
    except OSError:
        return None
    finally:
        os.close(directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
            return None
        data = os.read(fd, cap + 1)
        return data if len(data) <= cap else None
    finally:
        os.close(fd)
