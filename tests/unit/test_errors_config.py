"""Shared runtime pieces as pure logic: the error hierarchy across the wire, configuration loading,
the price table and API keys."""

from __future__ import annotations

import dataclasses
import stat
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.agentmesh.v1 import common_pb2 as pb
from services.coordinator.auth import (
    DEFAULT_KEY_FILE_NAME,
    KEYS_FILE_NAME,
    KeyRing,
    ensure_default_key,
    hash_key,
    load_keyring,
)
from services.coordinator.config import CoordinatorConfig
from services.coordinator.pricing import DEFAULT_PRICES, PriceTable, add_cost
from services.runtime import errors
from services.runtime.config import CommonConfig, describe, env_name, load, setting

# ---------------------------------------------------------------- errors across the wire


class FakeRpcError(grpc.RpcError):
    """A test double of grpc's client-side error interface (what a failed stub call raises)."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: Any = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._metadata = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._metadata


def over_the_wire(err: errors.AgentMeshError) -> errors.AgentMeshError:
    """What a client rebuilds from the status and trailers a server would send for `err`."""
    return errors.from_rpc_error(FakeRpcError(err.code, err.message, errors.trailing_metadata_for(err)))


ERROR_CLASSES = [
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.FailedPrecondition,
    errors.ResourceExhausted,
    errors.Unauthenticated,
    errors.PermissionDenied,
    errors.Unavailable,
    errors.DeadlineExceeded,
    errors.Cancelled,
    errors.Unimplemented,
    errors.Internal,
]


@pytest.mark.parametrize("cls", ERROR_CLASSES)
def test_every_error_class_survives_the_round_trip(cls):
    sent = cls(
        "queue is full",
        reason="QUEUE_FULL",
        details={"tenant": "alpha", "limit": "10"},
        retry_after_s=2.5,
        field_violations=[("input.steps", "1 to 1000 steps"), ("priority", "too high")],
    )
    got = over_the_wire(sent)
    assert type(got) is cls
    assert got.code == cls.code
    assert got.retryable == cls.retryable
    assert got.message == "queue is full"
    assert got.reason == "QUEUE_FULL"
    assert got.details == {"tenant": "alpha", "limit": "10"}
    assert got.retry_after_s == pytest.approx(2.5)
    assert got.field_violations == [("input.steps", "1 to 1000 steps"), ("priority", "too high")]
    assert got.to_json() == sent.to_json()


def test_to_rpc_status_carries_code_message_and_typed_details():
    err = errors.ResourceExhausted(
        "slow down",
        reason="RATE_LIMITED",
        details={"a": "b"},
        retry_after_s=0.25,
        field_violations=[("f", "d")],
    )
    status = err.to_rpc_status()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "slow down"
    info, retry, bad = (
        error_details_pb2.ErrorInfo(),
        error_details_pb2.RetryInfo(),
        error_details_pb2.BadRequest(),
    )
    assert [d.Unpack(m) for d, m in zip(status.details, (info, retry, bad), strict=True)] == [True] * 3
    assert (info.reason, info.domain, dict(info.metadata)) == ("RATE_LIMITED", errors.DOMAIN, {"a": "b"})
    assert retry.retry_delay.ToNanoseconds() == 250_000_000
    assert [(v.field, v.description) for v in bad.field_violations] == [("f", "d")]


def test_minimal_error_round_trips_with_its_defaults():
    got = over_the_wire(errors.NotFound("no task 'x'"))
    assert type(got) is errors.NotFound
    assert got.reason == "NOT_FOUND"
    assert got.details == {} and got.retry_after_s is None and got.field_violations == []
    assert len(errors.NotFound("x").to_rpc_status().details) == 1  # ErrorInfo only


def test_retry_after_keeps_sub_second_precision():
    assert over_the_wire(errors.Unavailable("x", retry_after_s=0.001)).retry_after_s == pytest.approx(0.001)
    assert over_the_wire(errors.Unavailable("x", retry_after_s=0)).retry_after_s == 0.0


def test_error_without_trailers_is_rebuilt_from_its_code():
    got = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert type(got) is errors.Unavailable
    assert got.reason == "UNAVAILABLE" and got.message == "connection refused" and got.retryable


def test_error_without_details_uses_the_code_name_as_message():
    got = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, ""))
    assert type(got) is errors.DeadlineExceeded
    assert got.message == "DEADLINE_EXCEEDED"


def test_unrelated_trailers_are_ignored():
    got = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone", (("x-trace", "abc"),)))
    assert type(got) is errors.NotFound and got.reason == "NOT_FOUND"


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_unknown_code_becomes_remote_error_keeping_the_code(code):
    plain = errors.from_rpc_error(FakeRpcError(code, "odd"))
    assert type(plain) is errors.RemoteError
    assert plain.code == code and plain.message == "odd"
    assert isinstance(plain, errors.AgentMeshError)

    sent = errors.RemoteError(code, "odd", reason="SOMETHING_ODD", details={"k": "v"}, retry_after_s=1.0)
    got = over_the_wire(sent)
    assert type(got) is errors.RemoteError
    assert got.code == code
    assert (got.reason, got.details, got.retry_after_s) == ("SOMETHING_ODD", {"k": "v"}, 1.0)


def test_remote_error_code_is_per_instance():
    errors.RemoteError(grpc.StatusCode.ABORTED, "a")
    assert errors.RemoteError.code == grpc.StatusCode.INTERNAL
    assert errors.AgentMeshError.code == grpc.StatusCode.INTERNAL


def test_trailing_metadata_uses_the_standard_status_details_key():
    ((key, value),) = errors.trailing_metadata_for(errors.Internal("x"))
    assert key == "grpc-status-details-bin"
    assert isinstance(value, bytes)


def test_str_and_json_forms():
    err = errors.InvalidArgument("bad", field_violations=[("a", "b")], retry_after_s=3)
    assert str(err) == "INVALID_ARGUMENT: bad"
    assert err.to_json() == {
        "code": "INVALID_ARGUMENT",
        "reason": "INVALID_ARGUMENT",
        "message": "bad",
        "details": {"retry_after_s": 3, "field_violations": [{"field": "a", "description": "b"}]},
    }


def test_internal_error_carries_its_correlation_id():
    err = errors.internal_error("c0ffee")
    assert isinstance(err, errors.Internal)
    assert "c0ffee" in err.message and err.details == {"correlation_id": "c0ffee"}
    assert over_the_wire(err).details == {"correlation_id": "c0ffee"}


# ---------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    name: str = setting("demo", "a name")
    workers: int = setting(4, "how many workers")
    ratio: float = setting(0.5, "a ratio")
    verbose: bool = setting(False, "talk more")


def test_defaults_apply_without_flags_or_env():
    assert load(DemoConfig, [], {}) == DemoConfig()


def test_env_beats_default_and_flag_beats_env():
    env = {"AGENTMESH_WORKERS": "6", "AGENTMESH_RATIO": "0.25", "AGENTMESH_NAME": "from-env"}
    cfg = load(DemoConfig, ["--workers", "8"], env)
    assert cfg == DemoConfig(name="from-env", workers=8, ratio=0.25, verbose=False)
    assert isinstance(cfg.workers, int) and isinstance(cfg.ratio, float)


def test_flags_use_dashes():
    cfg = load(CoordinatorConfig, ["--max-running", "3", "--tenant-submit-rate", "1.5"], {})
    assert (cfg.max_running, cfg.tenant_submit_rate) == (3, 1.5)


def test_env_is_read_from_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("AGENTMESH_NAME", "process-env")
    assert load(DemoConfig).name == "process-env"


def test_unrelated_env_is_ignored():
    assert load(DemoConfig, [], {"WORKERS": "9", "AGENTMESH_UNKNOWN": "x"}) == DemoConfig()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" On ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_bool_parsing(raw, value):
    assert load(DemoConfig, [], {"AGENTMESH_VERBOSE": raw}).verbose is value
    assert load(DemoConfig, ["--verbose", raw], {}).verbose is value


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("AGENTMESH_WORKERS", "many"),
        ("AGENTMESH_WORKERS", "1.5"),
        ("AGENTMESH_RATIO", "half"),
        ("AGENTMESH_VERBOSE", "maybe"),
    ],
)
def test_bad_env_value_exits_naming_the_variable(capsys, var, raw):
    with pytest.raises(SystemExit) as info:
        load(DemoConfig, [], {var: raw}, prog="demo")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert var in err
    assert raw in err


def test_bad_flag_value_exits(capsys):
    with pytest.raises(SystemExit) as info:
        load(DemoConfig, ["--workers", "many"], {})
    assert info.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_unknown_flag_exits():
    with pytest.raises(SystemExit):
        load(DemoConfig, ["--no-such-flag", "1"], {})


def test_config_is_frozen():
    cfg = load(DemoConfig, [], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers = 5  # type: ignore[misc]


def test_describe_lists_every_field_with_flag_env_default_and_help():
    assert describe(DemoConfig) == [
        ("--name", "AGENTMESH_NAME", "demo", "a name"),
        ("--workers", "AGENTMESH_WORKERS", 4, "how many workers"),
        ("--ratio", "AGENTMESH_RATIO", 0.5, "a ratio"),
        ("--verbose", "AGENTMESH_VERBOSE", False, "talk more"),
    ]


@pytest.mark.parametrize("cls", [CommonConfig, CoordinatorConfig])
def test_describe_covers_real_configs_including_inherited_fields(cls):
    rows = describe(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert [env for _, env, _, _ in rows] == [env_name(n) for n in names]
    assert [flag for flag, _, _, _ in rows] == ["--" + n.replace("_", "-") for n in names]
    assert all(help_text for _, _, _, help_text in rows), "every setting is documented"
    assert load(cls, [], {}) == cls()  # every default loads


def test_coordinator_config_inherits_the_common_fields():
    common = {f.name for f in dataclasses.fields(CommonConfig)}
    assert common <= {f.name for f in dataclasses.fields(CoordinatorConfig)}


# ---------------------------------------------------------------- pricing


def test_default_prices_parse():
    table = PriceTable.parse(DEFAULT_PRICES)
    assert table == PriceTable(tokens_in=2e-7, tokens_out=8e-7, gpu_ms=1e-6, cpu_ms=1.1e-8, wall_ms=1.1e-9)
    assert all(price > 0 for price in vars(table).values()), "every resource is priced above zero"


def test_parse_tolerates_spaces_and_empty_entries_and_defaults_to_zero():
    assert PriceTable.parse(" gpu_ms = 2 ,, tokens_out=1e-6 ,") == PriceTable(gpu_ms=2.0, tokens_out=1e-6)
    assert PriceTable.parse("") == PriceTable()


@pytest.mark.parametrize(
    "text", ["tokens=1", "usd=1", "gpu_ms", "=1", "gpu_ms=abc", "gpu_ms=-1", "cpu_ms=-1e-9"]
)
def test_parse_refuses_unknown_names_bad_numbers_and_negative_prices(text):
    with pytest.raises(ValueError):
        PriceTable.parse(text)


def test_parse_refusal_names_the_accepted_fields():
    with pytest.raises(ValueError, match="tokens_in"):
        PriceTable.parse("tokns_in=1")


@pytest.mark.parametrize("text", ["gpu_ms=nan", "tokens_in=inf"])
def test_parse_refuses_non_finite_prices(text):
    with pytest.raises(ValueError):
        PriceTable.parse(text)


def test_usd_sums_every_resource_at_its_price():
    table = PriceTable(tokens_in=1e-6, tokens_out=2e-6, gpu_ms=1e-3, cpu_ms=1e-4, wall_ms=1e-5)
    cost = pb.Cost(tokens_in=1000, tokens_out=500, gpu_ms=2.0, cpu_ms=10.0, wall_ms=100.0, usd=99.0)
    assert table.usd(cost) == pytest.approx(1e-3 + 1e-3 + 2e-3 + 1e-3 + 1e-3)  # cost.usd is not an input
    assert PriceTable().usd(cost) == 0.0
    assert table.usd(pb.Cost()) == 0.0


def test_add_cost_adds_every_field_into_the_total():
    total = pb.Cost(tokens_in=1, tokens_out=2, gpu_ms=0.5, cpu_ms=1.0, wall_ms=3.0, usd=0.01)
    part = pb.Cost(tokens_in=10, tokens_out=20, gpu_ms=1.5, cpu_ms=2.0, wall_ms=4.0, usd=0.02)
    add_cost(total, part)
    assert (total.tokens_in, total.tokens_out) == (11, 22)
    assert (total.gpu_ms, total.cpu_ms, total.wall_ms) == (2.0, 3.0, 7.0)
    assert total.usd == pytest.approx(0.03)
    assert part == pb.Cost(tokens_in=10, tokens_out=20, gpu_ms=1.5, cpu_ms=2.0, wall_ms=4.0, usd=0.02)


# ---------------------------------------------------------------- API keys


def unauthenticated(ring: KeyRing, header: str | None) -> str:
    with pytest.raises(errors.Unauthenticated) as info:
        ring.tenant_for(header)
    return info.value.reason


def test_parse_plain_maps_keys_to_tenants():
    ring = KeyRing.parse_plain("alpha=key-a, beta=key-b,")
    assert len(ring) == 2
    assert ring.tenant_for("Bearer key-a") == "alpha"
    assert ring.tenant_for("bearer key-b") == "beta"
    assert ring.tenant_for("BEARER   key-b  ") == "beta"


@pytest.mark.parametrize("text", ["alpha", "=key", "alpha=", "alpha=k,beta"])
def test_parse_plain_refuses_bad_entries(text):
    with pytest.raises(errors.InvalidArgument):
        KeyRing.parse_plain(text)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_key(header):
    assert unauthenticated(KeyRing.parse_plain("a=k"), header) == "MISSING_API_KEY"


@pytest.mark.parametrize("header", ["k", "Basic k", "Bearer", "Bearer ", "Bearer    ", "Token k"])
def test_malformed_key(header):
    assert unauthenticated(KeyRing.parse_plain("a=k"), header) == "MALFORMED_API_KEY"


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer K", "Bearer k2"])
def test_unknown_key(header):
    assert unauthenticated(KeyRing.parse_plain("a=k"), header) == "UNKNOWN_API_KEY"


def test_an_empty_ring_knows_no_key():
    assert unauthenticated(KeyRing.parse_plain(""), "Bearer anything") == "UNKNOWN_API_KEY"


def test_load_file_reads_hashed_keys_skipping_comments_and_blanks(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# tenant:sha256\n\nalpha:{hash_key('ka')}\n  beta:{hash_key('kb').upper()}  \n")
    ring = KeyRing.load_file(path)
    assert len(ring) == 2
    assert ring.tenant_for("Bearer ka") == "alpha"
    assert ring.tenant_for("Bearer kb") == "beta"
    assert unauthenticated(ring, f"Bearer {hash_key('ka')}") == "UNKNOWN_API_KEY"  # the hash is no key


@pytest.mark.parametrize("line", ["alpha", "alpha:abc", f"alpha={hash_key('k')}"])
def test_load_file_refuses_bad_lines_naming_the_line(tmp_path, line):
    path = tmp_path / "keys"
    path.write_text(f"# ok\n{line}\n")
    with pytest.raises(errors.InvalidArgument, match=r"keys:2:"):
        KeyRing.load_file(path)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_default_key_creates_private_files_once(tmp_path):
    data_dir = tmp_path / "data" / "nested"
    keys_file, key = ensure_default_key(data_dir)
    assert keys_file == data_dir / KEYS_FILE_NAME
    assert key and key.startswith("am_")
    plain = data_dir / DEFAULT_KEY_FILE_NAME
    assert plain.read_text() == key + "\n"
    assert mode(keys_file) == 0o600 and mode(plain) == 0o600
    assert key not in keys_file.read_text()  # only its hash is kept
    assert KeyRing.load_file(keys_file).tenant_for(f"Bearer {key}") == "default"
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([KEYS_FILE_NAME, DEFAULT_KEY_FILE_NAME])

    before = keys_file.read_text()
    again_file, again_key = ensure_default_key(data_dir)
    assert (again_file, again_key) == (keys_file, None)
    assert keys_file.read_text() == before
    assert plain.read_text() == key + "\n"


def test_load_keyring_prefers_plain_keys_then_the_file_then_the_default(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"filed:{hash_key('kf')}\n")
    assert load_keyring("plain=kp", str(keys), tmp_path / "d1").tenant_for("Bearer kp") == "plain"
    assert load_keyring("", str(keys), tmp_path / "d2").tenant_for("Bearer kf") == "filed"
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()
    ring = load_keyring("", "", tmp_path / "d3")
    key = (tmp_path / "d3" / DEFAULT_KEY_FILE_NAME).read_text().strip()
    assert ring.tenant_for(f"Bearer {key}") == "default"
