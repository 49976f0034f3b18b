"""Regenerate the Python code and mypy stubs for protos/ into memsched/v1/ (``--check``: fail if stale).

The output folder follows the proto package (Flower's rule: proto folder = proto package = import path),
so the absolute imports protoc writes (``from memsched.v1 import items_pb2``) resolve as they are.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("memsched") / "v1"
INIT_TEXT = (
    '"""Generated protobuf and gRPC code for the memsched.v1 contract; never edit, run tools/gen_protos.py."""\n'
)


def generate(out: Path) -> None:
    """Run protoc for every proto file into ``out`` (a folder standing for the repository root)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    scripts = Path(sys.executable).parent  # the mypy-protobuf plugins sit beside this interpreter, PATH or not
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / "memsched" / "__init__.py").write_text('"""Generated code of the memsched protobuf contract."""\n')
    (out / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    (out / PACKAGE_DIR / "py.typed").write_text("")


def stale_files(fresh: Path) -> list[str]:
    """Names of generated files that differ between ``fresh`` and the committed tree."""
    committed = ROOT / "memsched"
    names = {p.relative_to(fresh / "memsched") for p in (fresh / "memsched").rglob("*") if p.is_file()}
    names |= {p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return sorted(
        str(n)
        for n in names
        if not (fresh / "memsched" / n).exists()
        or not (committed / n).exists()
        or not filecmp.cmp(fresh / "memsched" / n, committed / n, shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            stale = stale_files(fresh)
            if stale:
                print("stale generated code, run `python tools/gen_protos.py`:", *stale, sep="\n  ")
                return 1
            print("generated code is up to date")
            return 0
        shutil.rmtree(ROOT / "memsched", ignore_errors=True)
        shutil.copytree(fresh / "memsched", ROOT / "memsched")
    print("generated", ROOT / PACKAGE_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
