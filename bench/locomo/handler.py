"""The query handler's own time at LoCoMo size: the handlers run in-process on a temporary LMDB shard, without
gRPC, the inbox or fsync, so this is the part of the query path that retrieval owns (the service benchmark,
``python -m bench.locomo``, reports the client's send-to-completion time beside recall).

It also counts each question's evidence turns in working memory after its query, as bench.locomo does through
GetMemory: the same handlers and settings as the workers, so the figure is the service's, reached in a fraction of
the time, and ``--scheduler`` tries a retrieval or scheduling setting through the whole query handler.

``--pooled`` puts every conversation's turns into one cube (ids prefixed with the conversation's) and asks every
question there: the other conversations' ~3,500 turns are distractors, and a cube past
``retrieval.exact_up_to`` memories ranks only its bounded candidates (``retrieval.candidate_limit``,
Retriever.bounded_signals), which LoCoMo's conversation-size cubes never reach. Comparing limits there measures
what the bound costs in recall.

    python -m bench.locomo.handler [PATH] [--embedder onnx] [--conversations N] [--scheduler JSON] [--pooled]
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
from typing import Any

from bench.locomo.__main__ import bundled_minilm, merge, percentile
from bench.locomo.data import CATEGORIES, DEFAULT_PATH, Tally, load
from memsched_grpc.config import load_settings
from memsched_grpc.cube import Cube
from memsched_grpc.handlers import HandlerContext, add, query
from memsched_grpc.models import Message
from memsched_grpc.retrieval.retriever import first_value
from memsched_grpc.store.cubes import CubeTables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--embedder", choices=["none", "onnx"], default="none")
    parser.add_argument("--conversations", type=int, default=0)
    parser.add_argument("--scheduler", default="", help="scheduler settings as JSON, merged over the defaults")
    parser.add_argument("--pooled", action="store_true", help="one cube holding every conversation (see above)")
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"LoCoMo data not found at {args.path}: skipping.")
        return 0
    retrieval: dict[str, Any] = {}
    if args.embedder == "onnx":
        model, tokenizer = bundled_minilm()
        retrieval = {"embedder": {"kind": "onnx", "model": model, "tokenizer": tokenizer}}
    scheduler = merge({"retrieval": retrieval}, json.loads(args.scheduler) if args.scheduler else {})
    tmp = Path(tempfile.mkdtemp(prefix="memsched-handler-"))
    try:
        settings = load_settings(storage={"data_dir": str(tmp)}, scheduler=scheduler)
        tables = CubeTables.open(tmp, 0, 512 << 20, False)
        config = settings.scheduler
        times: list[float] = []
        overall = Tally()
        by_category: dict[int, Tally] = {}
        conversations = load(args.path)[: args.conversations or None]
        groups = [conversations] if args.pooled else [[conv] for conv in conversations]
        for group in groups:
            cube_id = f"{group[0].sample_id}-{uuid.uuid4().hex[:6]}"
            held: dict[str, Cube] = {}
            working: list[str] = []

            def run(
                label: str,
                content: str,
                cube_id: str = cube_id,
                held: dict[str, Cube] = held,
                working: list[str] = working,
            ) -> float:
                message = Message(
                    item_id=str(uuid.uuid4()), user_id="u", mem_cube_id=cube_id, label=label, content=content
                )

                def handle(txn: object) -> float:
                    cube = held.get("cube") or Cube.load(tables, txn, "u", cube_id, config.capacities, 1000)
                    held["cube"] = cube
                    cube.txn = txn
                    started = time.perf_counter()
                    (add.handle if label == "add" else query.handle)(HandlerContext(message, cube, config))
                    elapsed = time.perf_counter() - started
                    if label == "query":
                        working[:] = working_dia_ids(cube)
                    cube.txn = None
                    return elapsed

                elapsed: float = tables.env.write(handle)
                return elapsed

            prefix = {conv.sample_id: f"{conv.sample_id}:" if args.pooled else "" for conv in group}
            for conv in group:
                for session in conv.sessions:
                    run("add", json.dumps([t.message(prefix[conv.sample_id]) for t in session]))
            for conv in group:
                for q in conv.questions:
                    times.append(run("query", q.text))
                    evidence = {prefix[conv.sample_id] + e for e in q.evidence}
                    found = len(set(working) & evidence)
                    overall.add(found, len(evidence))
                    by_category.setdefault(q.category, Tally()).add(found, len(evidence))
        print(
            f"query handler time ({len(times)} queries, embedder {args.embedder}): "
            f"p50 {percentile(times, 0.5) * 1000:.2f} ms  p95 {percentile(times, 0.95) * 1000:.2f} ms"
        )
        print(
            f"evidence recall@20 in working memory: pooled {overall.pooled:.3f} ({overall.found} of {overall.total})"
            f"  per-question mean {overall.mean:.3f}"
        )
        for category in sorted(by_category):
            t = by_category[category]
            print(f"    {CATEGORIES.get(category, str(category)):<12} pooled {t.pooled:.3f}  mean {t.mean:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def working_dia_ids(cube: Cube) -> set[str]:
    """The turns working memory holds, as bench.locomo reads them: each memory's dia_id and those of turns merged
    into it."""
    found: set[str] = set()
    for entry in cube.state.working:
        item = cube.get(entry.id)
        if item is None:
            continue
        dia_id = first_value(item.metadata, ["dia_id"])
        if dia_id is not None:
            found.add(str(dia_id))
        for merged in item.metadata.get("merged", []) or []:
            if isinstance(merged, dict) and "dia_id" in merged:
                found.add(str(merged["dia_id"]))
    return found


if __name__ == "__main__":
    sys.exit(main())
