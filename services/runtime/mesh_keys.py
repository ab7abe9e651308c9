"""The mesh's own keys: the worker key agent workers register with and the admin key of the operator
(the coordinator's Admin service, every service's Debug service). One of each per mesh, kept in the
data dir (or given as a setting), never a tenant's. Compared by SHA-256, in constant time."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from services.runtime.errors import InvalidArgument, Unauthenticated

WORKER_KEY_FILE_NAME = "worker.key"
ADMIN_KEY_FILE_NAME = "admin.key"
_PREFIXES = {WORKER_KEY_FILE_NAME: "amw_", ADMIN_KEY_FILE_NAME: "ama_"}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(authorization: str | None, what: str = "API key") -> str:
    """The key in `authorization: Bearer <key>`; Unauthenticated when there is none."""
    code = what.upper().replace(" ", "_")
    if not authorization:
        raise Unauthenticated(f"missing {what}: send `authorization: Bearer <key>`", reason=f"MISSING_{code}")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("malformed authorization: expected `Bearer <key>`", reason=f"MALFORMED_{code}")
    return key.strip()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, whole or not at all."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def ensure_mesh_key(data_dir: Path, file_name: str) -> str:
    """DATA_DIR/`file_name`, made on first use. Services starting together agree on one key: the
    first to link its file in place wins, and the others read that one."""
    path = data_dir / file_name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".new{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_PREFIXES.get(file_name, "am_") + secrets.token_urlsafe(24) + "\n")
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs holds
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip()


class MeshKey:
    """Checks one of the mesh's keys (constant time): `role` says who holds it ("worker": agent
    workers registering; "admin": the operator)."""

    def __init__(self, key: str, role: str) -> None:
        if not key:
            raise InvalidArgument(f"the {role} key is empty")
        self._digest = hash_key(key)
        self.role = role

    def check(self, authorization: str | None) -> None:
        key = presented_key(authorization, f"{self.role} key")
        if not hmac.compare_digest(hash_key(key), self._digest):
            raise Unauthenticated(f"unknown {self.role} key", reason=f"UNKNOWN_{self.role.upper()}_KEY")
