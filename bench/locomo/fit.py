"""Fit the fusion weights of retrieval/retriever.py on LoCoMo, honestly: leave one conversation out.

Runs the retriever in-process (no server: the signals are the same code the service runs) over every question of
every conversation, then for each conversation fits weights on the others and measures evidence recall@20 on it.
The held-out figure is what to quote; the weights fitted on all conversations are what to ship (print-out at the
end, for FusionWeights). Bounded: a few seconds per conversation, once; fitting works on small matrices.

    python -m bench.locomo.fit [PATH] [--embedder onnx [--model DIR --tokenizer DIR]]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.locomo.__main__ import bundled_minilm
from bench.locomo.data import CATEGORIES, DEFAULT_PATH, Conversation, Tally, load
from memsched_grpc.models import MemoryItem, MemoryType
from memsched_grpc.retrieval.components import components
from memsched_grpc.retrieval.retriever import SIGNALS, Retriever
from memsched_grpc.retrieval.settings import EmbedderConfig, FusionWeights, RetrievalConfig

K = 20
POOL = 200
"""Rows kept per question for fitting: the union of the best POOL memories under a few simple scorers, plus all
evidence. Enough to learn the order at the top, small enough to fit in a second."""

Floats = npt.NDArray[np.float64]


@dataclass
class QuestionRows:
    category: int
    signals: Floats  # (memories, SIGNALS)
    labels: npt.NDArray[np.bool_]
    total: int  # valid evidence turns, including ones the cube does not hold


def build(conv: Conversation, config: RetrievalConfig) -> tuple[Retriever, dict[str, str]]:
    """A retriever holding the conversation as the service would: one memory per turn, in order."""
    retriever = Retriever(config, components(config).embedder)
    created = datetime.now(UTC)
    items = []
    for seq, turn in enumerate(conv.turns, 1):
        message = turn.message()
        items.append(
            MemoryItem(
                id=turn.dia_id,
                memory=message["content"],
                memory_type=MemoryType.USER,
                metadata=message["metadata"],
                created_at=created,
                sequence=seq,
            )
        )
    retriever.add_many(items)
    return retriever, {t.dia_id: t.dia_id for t in conv.turns}


def collect(conversations: list[Conversation], config: RetrievalConfig) -> list[list[QuestionRows]]:
    out = []
    for conv in conversations:
        started = time.perf_counter()
        retriever, _ = build(conv, config)
        alive_ids = [m for m in retriever._ids if m is not None]
        position = {m: i for i, m in enumerate(alive_ids)}
        rows = []
        for q in conv.questions:
            matrix, _ = retriever.signals(q.text)
            matrix = matrix[: len(alive_ids)]
            labels = np.zeros(len(alive_ids), dtype=bool)
            for e in q.evidence:
                if e in position:
                    labels[position[e]] = True
            rows.append(QuestionRows(q.category, matrix, labels, len(q.evidence)))
        out.append(rows)
        print(f"# {conv.sample_id}: {len(rows)} questions, {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return out


def recall(data: list[list[QuestionRows]], w: Floats, k: int = K) -> tuple[Tally, dict[int, Tally]]:
    overall = Tally()
    by_category: dict[int, Tally] = {}
    for rows in data:
        for q in rows:
            scores = q.signals @ w
            top = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
            found = int(q.labels[top].sum())
            overall.add(found, q.total)
            by_category.setdefault(q.category, Tally()).add(found, q.total)
    return overall, by_category


def _training_rows(data: list[list[QuestionRows]], pool: int = POOL) -> tuple[Floats, Floats, Floats]:
    """Pairs (signals, label, weight) for a logistic fit: per question, the union of the best memories by each
    single signal and all evidence; each question weighs the same in total (long and short ones alike)."""
    xs, ys, ws = [], [], []
    for rows in data:
        for q in rows:
            keep = np.zeros(len(q.labels), dtype=bool)
            for j in range(q.signals.shape[1]):
                column = q.signals[:, j]
                if column.any():
                    keep[np.argsort(-column)[:pool]] = True
            keep |= q.labels
            x, y = q.signals[keep], q.labels[keep].astype(np.float64)
            weight = np.where(y > 0, 1.0 / max(y.sum(), 1.0), 1.0 / max((1 - y).sum(), 1.0))
            xs.append(x)
            ys.append(y)
            ws.append(weight)
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ws)


def fit_logistic(data: list[list[QuestionRows]], l2: float = 1e-3, steps: int = 50) -> Floats:
    """Weighted, L2-regularised logistic regression by Newton's method (a handful of features: exact and quick)."""
    x, y, sample_weight = _training_rows(data)
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x1.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x1 @ w)))
        gradient = x1.T @ (sample_weight * (p - y)) + l2 * np.r_[w[:-1], 0.0]
        hessian = (x1 * (sample_weight * p * (1 - p))[:, None]).T @ x1 + l2 * np.diag(np.r_[np.ones(len(w) - 1), 0.0])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return np.asarray(w[:-1], dtype=np.float64)


def normalised(w: Floats) -> Floats:
    top = float(np.abs(w).max()) or 1.0
    return np.asarray(w / top, dtype=np.float64)


def report(title: str, overall: Tally, by_category: dict[int, Tally]) -> None:
    print(f"{title}: pooled {overall.pooled:.3f}  mean {overall.mean:.3f}  ({overall.questions} questions)")
    for category in sorted(by_category):
        t = by_category[category]
        name = CATEGORIES.get(category, str(category))
        print(f"    {category} {name:<12} pooled {t.pooled:.3f}  mean {t.mean:.3f}  ({t.questions})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--embedder", choices=["none", "onnx", "hashing"], default="none")
    parser.add_argument("--model", default="")
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--l2", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"LoCoMo data not found at {args.path}; skipping (see bench/RESULTS.md for how to get it)")
        return 0
    if args.embedder == "onnx" and not args.model:
        args.model, args.tokenizer = bundled_minilm()
    embedder = EmbedderConfig(kind=args.embedder, model=args.model, tokenizer=args.tokenizer, threads=2)
    config = RetrievalConfig(embedder=embedder)
    conversations = load(args.path)
    data = collect(conversations, config)
    dense = args.embedder != "none"
    columns = [i for i, name in enumerate(SIGNALS) if dense or "dense" not in name]

    def restrict(w: Floats) -> Floats:
        full = np.zeros(len(SIGNALS))
        full[columns] = w
        return full

    sub = [[QuestionRows(q.category, q.signals[:, columns], q.labels, q.total) for q in rows] for rows in data]
    lexical_only = np.zeros(len(columns))
    lexical_only[0] = 1.0
    report("lexical only (BM25)", *recall(sub, lexical_only))
    shipped = config.dense_weights if dense else config.weights
    report("shipped weights", *recall(data, np.array([getattr(shipped, s) for s in SIGNALS])))

    held_out = Tally()
    held_by_category: dict[int, Tally] = {}
    for i, conv in enumerate(conversations):
        train = sub[:i] + sub[i + 1 :]
        w = fit_logistic(train, args.l2)
        overall, by_category = recall([sub[i]], w)
        print(f"  held out {conv.sample_id}: pooled {overall.pooled:.3f}  weights {np.round(normalised(w), 3)}")
        for q_found, q_total in [(overall.found, overall.total)]:
            held_out.found += q_found
            held_out.total += q_total
        held_out.fractions.extend(overall.fractions)
        for category, t in by_category.items():
            into = held_by_category.setdefault(category, Tally())
            into.found += t.found
            into.total += t.total
            into.fractions.extend(t.fractions)
    report("leave-one-conversation-out (held-out figure)", held_out, held_by_category)
    w_all = normalised(fit_logistic(sub, args.l2))
    report("fitted on all (in-sample, for reference only)", *recall(sub, w_all))
    weights = FusionWeights(**{name: round(float(v), 3) for name, v in zip(SIGNALS, restrict(w_all), strict=True)})
    print(f"weights to ship ({'dense_weights' if dense else 'weights'}): {weights!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
