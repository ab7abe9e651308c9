#!/usr/bin/env python3
"""Generate Python code and type stubs from protos/ -- the only way generated code is made.

    python scripts/gen_protos.py           write protos/agentmesh/v1/*_pb2*.py(i)
    python scripts/gen_protos.py --check   exit 1 if the files in place differ from a fresh run

Paths are given relative to the repository root, so generated modules import each other as
`protos.agentmesh.v1.<name>_pb2` while the protobuf package stays `agentmesh.v1`.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "agentmesh" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _protoc(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    plugin_dir = Path(sys.executable).parent
    protos = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
    ]
    mypy_plugin = plugin_dir / "protoc-gen-mypy"
    if mypy_plugin.exists():
        args += [
            f"--plugin=protoc-gen-mypy={mypy_plugin}",
            f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
        ]
    rc = protoc.main(args + protos)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def _generated(directory: Path) -> dict[str, Path]:
    found = {}
    for suffix in GENERATED_SUFFIXES:
        for path in directory.glob(f"*{suffix}"):
            found[path.name] = path
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _protoc(Path(tmp))
        fresh = _generated(Path(tmp) / "protos" / "agentmesh" / "v1")
        current = _generated(PROTO_DIR)
        if opts.check:
            stale = sorted(
                set(fresh) ^ set(current)
                | {
                    n
                    for n in set(fresh) & set(current)
                    if not filecmp.cmp(fresh[n], current[n], shallow=False)
                }
            )
            if stale:
                print("generated protobuf code is stale:", ", ".join(stale), file=sys.stderr)
                return 1
            print(f"generated protobuf code is current ({len(fresh)} files)")
            return 0
        for name, path in current.items():
            if name not in fresh:
                path.unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, PROTO_DIR / name)
        print(f"generated {len(fresh)} files in {PROTO_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
