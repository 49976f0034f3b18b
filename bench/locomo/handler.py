"""The query handler's own time at LoCoMo size: the handlers run in-process on a temporary LMDB shard, without
gRPC, the inbox or fsync, so this is the part of the query path that retrieval owns (the service benchmark,
``python -m bench.locomo``, reports the client's send-to-completion time beside recall).

    python -m bench.locomo.handler [PATH] [--embedder onnx] [--conversations N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.locomo.__main__ import bundled_minilm, percentile
from bench.locomo.data import DEFAULT_PATH, load
from memsched_grpc.config import load_settings
from memsched_grpc.cube import Cube
from memsched_grpc.handlers import HandlerContext, add, query
from memsched_grpc.models import Message
from memsched_grpc.store.cubes import CubeTables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--embedder", choices=["none", "onnx"], default="none")
    parser.add_argument("--conversations", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"LoCoMo data not found at {args.path}: skipping.")
        return 0
    retrieval = {}
    if args.embedder == "onnx":
        model, tokenizer = bundled_minilm()
        retrieval = {"embedder": {"kind": "onnx", "model": model, "tokenizer": tokenizer}}
    tmp = Path(tempfile.mkdtemp(prefix="memsched-handler-"))
    try:
        settings = load_settings(storage={"data_dir": str(tmp)}, scheduler={"retrieval": retrieval})
        tables = CubeTables.open(tmp, 0, 512 << 20, False)
        config = settings.scheduler
        times: list[float] = []
        for conv in load(args.path)[: args.conversations or None]:
            cube_id = f"{conv.sample_id}-{uuid.uuid4().hex[:6]}"
            held: dict[str, Cube] = {}

            def run(label: str, content: str, cube_id: str = cube_id, held: dict[str, Cube] = held) -> float:
                message = Message(
                    item_id=str(uuid.uuid4()), user_id="u", mem_cube_id=cube_id, label=label, content=content
                )

                def handle(txn: object) -> float:
                    cube = held.get("cube") or Cube.load(tables, txn, "u", cube_id, config.capacities, 1000)
                    held["cube"] = cube
                    cube.txn = txn
                    started = time.perf_counter()
                    (add.handle if label == "add" else query.handle)(HandlerContext(message, cube, config))
                    cube.txn = None
                    return time.perf_counter() - started

                elapsed: float = tables.env.write(handle)
                return elapsed

            for session in conv.sessions:
                run("add", json.dumps([t.message() for t in session]))
            times += [run("query", q.text) for q in conv.questions]
        print(
            f"query handler time ({len(times)} queries, embedder {args.embedder}): "
            f"p50 {percentile(times, 0.5) * 1000:.2f} ms  p95 {percentile(times, 0.95) * 1000:.2f} ms"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
