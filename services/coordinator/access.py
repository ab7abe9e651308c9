"""Who may call the coordinator, and what they did: API keys kept in the store, and the audit log.

Keys made with `agentmesh keys create` live in the `api_keys` table as SHA-256 digests (the secret is
shown once, at creation). Every coordinator of the store reads the table again each second (and at
once when it meets a key it does not know), so a key works everywhere as soon as it is made and is
refused everywhere within a second of being revoked or expiring, with no restart. Keys from the
configuration sit beside them, fixed.

The audit log (`audit` table) gets a row for each cancel, input and resolve by a tenant's key, in the
same transaction as the change itself, and for each key made or revoked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from protos.agentmesh.v1 import agent_service_pb2 as api
from services.coordinator.auth import STORE, Caller, KeyEntry, KeyRing, hash_key
from services.coordinator.store import Store
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how stale a coordinator's view of the keys may be
# An unknown key waits for a read of the table that began after it came (so a key made a moment ago
# on another coordinator is never refused); such reads begin at most this often, so a flood of bad
# keys costs the store at most ten small reads a second.
MISS_READ_GAP_S = 0.1
ADMIN = "admin"  # the key id of the operator in the audit log
MAX_AUDIT_PAGE = 1000
KEY_COLUMNS = "id, tenant, digest, label, created_at, expires_at, revoked_at"


# ------------------------------------------------------------------ SQL (run on the store's thread)


def insert_key(conn: Any, entry: KeyEntry, digest: str) -> None:
    conn.execute(
        f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (entry.id, entry.tenant, digest, entry.label, entry.created_at, entry.expires_at, 0.0),
    )


def load_keys(conn: Any) -> dict[str, KeyEntry]:
    rows = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys").fetchall()
    return {row[2]: KeyEntry(row[0], row[1], STORE, row[3], row[4], row[5], row[6]) for row in rows}


def revoke_key(conn: Any, key_id: str, now: float) -> KeyEntry:
    row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
    if row is None:
        raise NotFound(f"no API key {key_id!r} in the store", reason="KEY_NOT_FOUND")
    if not row[6]:
        conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, key_id))
    return KeyEntry(row[0], row[1], STORE, row[3], row[4], row[5], row[6] or now)


def audit(conn: Any, caller: Caller, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO audit (at, id, tenant, key_id, action, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            time.time(),
            secrets.token_hex(6),
            caller.tenant,
            caller.key_id,
            action,
            target,
            json.dumps(detail or {}),
        ),
    )


def list_audit(conn: Any, tenant: str, limit: int, before: float) -> list[api.AuditEntry]:
    where, params = ["1 = 1"], []
    if tenant:
        where.append("tenant = ?")
        params.append(tenant)
    if before:
        where.append("at < ?")
        params.append(before)
    rows = conn.execute(
        "SELECT at, tenant, key_id, action, target, detail FROM audit "
        f"WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [
        api.AuditEntry(at=r[0], tenant=r[1], key_id=r[2], action=r[3], target=r[4], detail_json=r[5])
        for r in rows
    ]


# ------------------------------------------------------------------ the coordinator's side


def info_of(entry: KeyEntry) -> api.ApiKeyInfo:
    return api.ApiKeyInfo(
        id=entry.id,
        tenant=entry.tenant,
        label=entry.label,
        created_at=entry.created_at,
        expires_at=entry.expires_at,
        revoked_at=entry.revoked_at,
        source=entry.source,
    )


class Access:
    """The key ring kept current from the store, and the key operations of the Admin service."""

    def __init__(self, store: Store, ring: KeyRing) -> None:
        self.store, self.ring = store, ring
        self._read_started = float("-inf")  # monotonic time the last read of the table began
        self._reading: asyncio.Lock | None = None

    def _lock(self) -> asyncio.Lock:
        if self._reading is None:  # made on the running loop
            self._reading = asyncio.Lock()
        return self._reading

    async def _read(self) -> None:
        self._read_started = time.monotonic()
        self.ring.replace_stored(await self.store.run(load_keys))

    async def refresh(self) -> None:
        async with self._lock():
            await self._read()

    async def _read_since(self, arrived: float) -> None:
        async with self._lock():
            if self._read_started >= arrived:  # read (by another waiter) since this request came
                return
            wait = self._read_started + MISS_READ_GAP_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._read()

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a store hiccup keeps the last view; the next read retries
                log.exception("cannot read the API keys")

    async def caller(self, authorization: str | None) -> Caller:
        arrived = time.monotonic()
        try:
            return self.ring.caller_for(authorization)
        except Unauthenticated as exc:
            if exc.reason != "UNKNOWN_API_KEY":
                raise
        # Perhaps a key made a moment ago on another coordinator: read the table before refusing it.
        await self._read_since(arrived)
        return self.ring.caller_for(authorization)

    async def create(self, tenant: str, label: str, expires_in_s: float) -> tuple[KeyEntry, str]:
        violations = []
        if not tenant or len(tenant) > 128 or not tenant.replace("-", "").replace("_", "").isalnum():
            violations.append(("tenant", "1-128 letters, digits, - and _"))
        if len(label) > 256:
            violations.append(("label", "at most 256 characters"))
        if not 0 <= expires_in_s <= 10 * 365 * 86400:
            violations.append(("expires_in_s", "0 (never) to ten years"))
        if violations:
            raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in violations), field_violations=violations)
        secret = "am_" + secrets.token_urlsafe(24)
        now = time.time()
        entry = KeyEntry(
            "key_" + secrets.token_hex(6),
            tenant,
            STORE,
            label,
            now,
            now + expires_in_s if expires_in_s else 0.0,
        )

        def op(conn: Any) -> None:
            insert_key(conn, entry, hash_key(secret))
            audit(
                conn,
                Caller(tenant, ADMIN),
                "key.create",
                entry.id,
                {"label": label, "expires_at": entry.expires_at},
            )

        await self.store.run(op)
        await self.refresh()
        return entry, secret

    async def revoke(self, key_id: str) -> KeyEntry:
        configured = next((e for e in self.ring.entries() if e.id == key_id and e.source != STORE), None)
        if configured is not None:
            raise FailedPrecondition(
                f"API key {key_id} comes from the configuration (api_keys, api_keys_file): remove it there",
                reason="KEY_IN_CONFIG",
            )

        def op(conn: Any) -> KeyEntry:
            entry = revoke_key(conn, key_id, time.time())
            audit(conn, Caller(entry.tenant, ADMIN), "key.revoke", key_id)
            return entry

        entry = await self.store.run(op)
        await self.refresh()
        return entry

    def list(self, tenant: str, include_revoked: bool) -> list[KeyEntry]:
        return sorted(
            (
                e
                for e in self.ring.entries()
                if (not tenant or e.tenant == tenant) and (include_revoked or not e.revoked_at)
            ),
            key=lambda e: (e.tenant, e.created_at, e.id),
        )

    async def audit_log(self, tenant: str, limit: int, before: float) -> list[api.AuditEntry]:
        if not 0 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidArgument(f"limit: 0 to {MAX_AUDIT_PAGE}", field_violations=[("limit", "0 to 1000")])
        return await self.store.run(lambda conn: list_audit(conn, tenant, limit or 100, before))
