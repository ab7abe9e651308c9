"""API keys -> tenants. Keys are kept only as SHA-256 hashes.

Two sources: the configuration (`api_keys`, `api_keys_file`, or the generated default key), fixed
for the process's life, and the store (`agentmesh keys create|revoke`, services/coordinator/access.py),
which every coordinator reads again each second, so a revocation takes effect without a restart.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from services.runtime.errors import InvalidArgument, Unauthenticated
from services.runtime.mesh_keys import (
    WORKER_KEY_FILE_NAME,
    ensure_mesh_key,
    hash_key,
    presented_key,
    write_private,
)

KEYS_FILE_NAME = "api_keys"
DEFAULT_KEY_FILE_NAME = "default.key"
CONFIG, STORE = "config", "store"


@dataclass(frozen=True)
class KeyEntry:
    id: str
    tenant: str
    source: str  # CONFIG or STORE
    label: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0  # 0: never
    revoked_at: float = 0.0  # 0: not revoked


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the tenant, and which of its keys (for the audit log)."""

    tenant: str
    key_id: str


class KeyRing:
    def __init__(self, hashed: dict[str, str]) -> None:
        # sha256 hex -> entry. Looked up by the hash of the presented key: an attacker cannot steer
        # a SHA-256, so the lookup's timing tells nothing about the keys held.
        self._config = {
            digest: KeyEntry(f"config_{digest[:12]}", tenant, CONFIG) for digest, tenant in hashed.items()
        }
        self._stored: dict[str, KeyEntry] = {}

    def __len__(self) -> int:
        return len(self._config) + len(self._stored)

    def replace_stored(self, entries: dict[str, KeyEntry]) -> None:
        """The store's keys as just read (digest -> entry), in place of the ones read before."""
        self._stored = entries

    def entries(self) -> list[KeyEntry]:
        return [*self._config.values(), *self._stored.values()]

    def is_known(self, authorization: str | None) -> bool:
        try:
            digest = hash_key(presented_key(authorization))
        except Unauthenticated:
            return False
        return digest in self._config or digest in self._stored

    def caller_for(self, authorization: str | None, now: float | None = None) -> Caller:
        digest = hash_key(presented_key(authorization))
        entry = self._config.get(digest) or self._stored.get(digest)
        if entry is None:
            raise Unauthenticated("unknown API key", reason="UNKNOWN_API_KEY")
        if entry.revoked_at:
            raise Unauthenticated(f"API key {entry.id} was revoked", reason="REVOKED_API_KEY")
        if entry.expires_at and (time.time() if now is None else now) >= entry.expires_at:
            raise Unauthenticated(f"API key {entry.id} has expired", reason="EXPIRED_API_KEY")
        return Caller(entry.tenant, entry.id)

    def tenant_for(self, authorization: str | None) -> str:
        return self.caller_for(authorization).tenant

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
    write_private(data_dir / DEFAULT_KEY_FILE_NAME, key + "\n")
    write_private(keys_file, f"# tenant:sha256(key)\ndefault:{hash_key(key)}\n")
    return keys_file, key


def load_keyring(api_keys: str, api_keys_file: str, data_dir: Path) -> KeyRing:
    if api_keys:
        return KeyRing.parse_plain(api_keys)
    if api_keys_file:
        return KeyRing.load_file(Path(api_keys_file))
    keys_file, _ = ensure_default_key(data_dir)
    return KeyRing.load_file(keys_file)


def ensure_worker_key(data_dir: Path) -> str:
    return ensure_mesh_key(data_dir, WORKER_KEY_FILE_NAME)
