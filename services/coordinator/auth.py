"""API keys -> tenants. Keys are kept only as SHA-256 hashes and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from services.runtime.errors import InvalidArgument, Unauthenticated

KEYS_FILE_NAME = "api_keys"
DEFAULT_KEY_FILE_NAME = "default.key"
# The key agent workers register with: one per mesh, kept beside the store, never a tenant's.
WORKER_KEY_FILE_NAME = "worker.key"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, hashed: dict[str, str]) -> None:
        # sha256 hex -> tenant. Looking up by the hash of the presented key does not leak the stored
        # keys through timing: an attacker cannot steer the hash; the final compare is constant-time.
        self._by_hash = hashed

    def __len__(self) -> int:
        return len(self._by_hash)

    def tenant_for(self, authorization: str | None) -> str:
        if not authorization:
            raise Unauthenticated(
                "missing API key: send `authorization: Bearer <key>`", reason="MISSING_API_KEY"
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "malformed authorization: expected `Bearer <key>`", reason="MALFORMED_API_KEY"
            )
        digest = hash_key(key.strip())
        for stored, tenant in self._by_hash.items():
            if hmac.compare_digest(stored, digest):
                return tenant
        raise Unauthenticated("unknown API key", reason="UNKNOWN_API_KEY")

    @classmethod
    def parse_plain(cls, text: str) -> KeyRing:
        """`tenant=key,tenant2=key2`."""
        hashed = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            tenant, sep, key = part.partition("=")
            if not sep or not tenant or not key:
                raise InvalidArgument(f"bad api key entry {part!r}: expected tenant=key")
            hashed[hash_key(key)] = tenant
        return cls(hashed)

    @classmethod
    def load_file(cls, path: Path) -> KeyRing:
        """Lines of `tenant:sha256hex`; blank lines and # comments are skipped."""
        hashed = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tenant, sep, digest = line.partition(":")
            if not sep or len(digest) != 64:
                raise InvalidArgument(f"{path}:{number}: expected tenant:sha256hex")
            hashed[digest.lower()] = tenant
        return cls(hashed)


def ensure_default_key(data_dir: Path) -> tuple[Path, str | None]:
    """Make sure the data dir holds a key file; create one for tenant `default` if it has none.
    Returns (keys file, the new plain key or None if the file existed)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    keys_file = data_dir / KEYS_FILE_NAME
    if keys_file.exists():
        return keys_file, None
    key = "am_" + secrets.token_urlsafe(24)
    _write_private(data_dir / DEFAULT_KEY_FILE_NAME, key + "\n")
    _write_private(keys_file, f"# tenant:sha256(key)\ndefault:{hash_key(key)}\n")
    return keys_file, key


def load_keyring(api_keys: str, api_keys_file: str, data_dir: Path) -> KeyRing:
    if api_keys:
        return KeyRing.parse_plain(api_keys)
    if api_keys_file:
        return KeyRing.load_file(Path(api_keys_file))
    keys_file, _ = ensure_default_key(data_dir)
    return KeyRing.load_file(keys_file)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def ensure_worker_key(data_dir: Path) -> str:
    """The mesh's worker key (DATA_DIR/worker.key), made on first use."""
    path = data_dir / WORKER_KEY_FILE_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_private(path, "amw_" + secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


class WorkerKey:
    """Checks the key an agent worker presents (constant time)."""

    def __init__(self, key: str) -> None:
        if not key:
            raise InvalidArgument("the worker key is empty")
        self._digest = hash_key(key)

    def check(self, authorization: str | None) -> None:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "agent workers register with `authorization: Bearer <worker key>`",
                reason="MISSING_WORKER_KEY",
            )
        if not hmac.compare_digest(hash_key(key.strip()), self._digest):
            raise Unauthenticated("unknown worker key", reason="UNKNOWN_WORKER_KEY")
