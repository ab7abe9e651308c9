"""API keys as the coordinator checks them (services/coordinator/auth.py): keys from the
configuration beside keys from the store, revocation, expiry, the mesh's own keys; and the CLI's
durations."""

from __future__ import annotations

import argparse

import pytest

from agentmesh.admin_cli import duration_s
from services.coordinator.auth import STORE, Caller, KeyEntry, KeyRing
from services.runtime.errors import Unauthenticated
from services.runtime.mesh_keys import MeshKey, hash_key


def bearer(key: str) -> str:
    return f"Bearer {key}"


def test_configured_and_stored_keys_name_their_tenant_and_key() -> None:
    ring = KeyRing({hash_key("k-alpha"): "alpha"})
    ring.replace_stored({hash_key("k-gamma"): KeyEntry("key_1", "gamma", STORE)})
    assert ring.caller_for(bearer("k-alpha")) == Caller("alpha", f"config_{hash_key('k-alpha')[:12]}")
    assert ring.caller_for(bearer("k-gamma")) == Caller("gamma", "key_1")
    assert len(ring) == 2 and ring.is_known(bearer("k-gamma")) and not ring.is_known(bearer("nope"))


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "MISSING_API_KEY"),
        ("Basic abc", "MALFORMED_API_KEY"),
        ("Bearer   ", "MALFORMED_API_KEY"),
        ("Bearer nope", "UNKNOWN_API_KEY"),
        ("Bearer k-old", "REVOKED_API_KEY"),
        ("Bearer k-brief", "EXPIRED_API_KEY"),
    ],
)
def test_each_refusal_says_why(authorization: str | None, reason: str) -> None:
    ring = KeyRing({})
    ring.replace_stored(
        {
            hash_key("k-old"): KeyEntry("key_old", "t", STORE, revoked_at=50.0),
            hash_key("k-brief"): KeyEntry("key_brief", "t", STORE, expires_at=100.0),
        }
    )
    with pytest.raises(Unauthenticated) as info:
        ring.caller_for(authorization, now=100.0)
    assert info.value.reason == reason


def test_a_key_works_until_it_expires() -> None:
    ring = KeyRing({})
    ring.replace_stored({hash_key("k"): KeyEntry("key_k", "t", STORE, expires_at=100.0)})
    assert ring.caller_for(bearer("k"), now=99.9).tenant == "t"
    with pytest.raises(Unauthenticated):
        ring.caller_for(bearer("k"), now=100.0)


def test_a_revocation_read_from_the_store_replaces_what_was_known() -> None:
    ring = KeyRing({})
    ring.replace_stored({hash_key("k"): KeyEntry("key_k", "t", STORE)})
    ring.caller_for(bearer("k"))
    ring.replace_stored({hash_key("k"): KeyEntry("key_k", "t", STORE, revoked_at=1.0)})
    with pytest.raises(Unauthenticated):
        ring.caller_for(bearer("k"))


def test_the_mesh_keys_check_their_own_role() -> None:
    admin = MeshKey("secret-admin", "admin")
    admin.check(bearer("secret-admin"))
    with pytest.raises(Unauthenticated) as info:
        admin.check(bearer("secret-worker"))
    assert info.value.reason == "UNKNOWN_ADMIN_KEY"
    with pytest.raises(Unauthenticated) as info:
        MeshKey("w", "worker").check(None)
    assert info.value.reason == "MISSING_WORKER_KEY"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


def test_a_bad_duration_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s("soon")
