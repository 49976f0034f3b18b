"""Fit the fusion weights of retrieval/retriever.py on LoCoMo, honestly: leave one conversation out.

Runs the retriever in-process (no server: the signals are the same code the service runs) over every question of
every conversation, then for each conversation fits weights on the others and measures evidence recall@20 on it.
The held-out figure is what to quote; the weights fitted on all conversations are what to ship (print-out at the
end, for ``first_stage`` and FusionWeights). Bounded: well under a minute.

Two stages, both fitted without the held-out conversation:
1. the first stage (the signals that need no feedback) by a weighted logistic regression of "is evidence";
2. the second stage (every signal, including the feedback and latent ones computed from the first stage's best
   memories, so the signals are recomputed with that fold's first stage) by a pairwise logistic regression
   (RankNet with a linear scorer): every evidence memory against every other memory among the first fit's best
   100, each question weighing the same. It orders the head of the ranking, which is what recall@20 counts,
   where the pointwise fit spends itself on the easy negatives far down.

    python -m bench.locomo.fit [PATH] [--embedder onnx [--model DIR --tokenizer DIR]] [--objective logistic]
"""

from __future__ import annotations

import argparse
import json
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
from memsched_grpc.retrieval.retriever import FIRST_STAGE, SIGNALS, Retriever, spread, weight_vector
from memsched_grpc.retrieval.settings import EmbedderConfig, FusionWeights, RetrievalConfig

K = 20
POOL = 200
"""Rows kept per question for the pointwise fit: the union of the best POOL memories under each single signal,
plus all evidence. Enough to learn the order at the top, small enough to fit in a second."""
PAIR_POOL = 100
"""Negatives per question for the pairwise fit: the non-evidence memories among the best PAIR_POOL."""

Floats = npt.NDArray[np.float64]


@dataclass
class QuestionRows:
    category: int
    signals: Floats  # (memories, columns)
    labels: npt.NDArray[np.bool_]
    total: int  # valid evidence turns, including ones the cube does not hold


def build(conv: Conversation, config: RetrievalConfig, incremental: bool = False) -> tuple[Retriever, dict[str, str]]:
    """A retriever holding the conversation as the service does when the questions come: one memory per turn, in
    order, indexed at once (a cube's retriever is built on its first query from the memories stored by then, so
    bench.locomo's cubes fit their latent space once over the whole conversation). ``incremental``: one memory at a
    time instead, as a retriever that is already loaded while the conversation arrives indexes them (the latent
    space is then refitted as the cube grows, every ``latent_refit_growth``)."""
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
    if incremental:
        for item in items:
            retriever.add(item)
    else:
        retriever.add_many(items)
    return retriever, {t.dia_id: t.dia_id for t in conv.turns}


def collect(
    conversations: list[Conversation],
    retrievers: list[Retriever],
    first_stage: Floats | None = None,
    quiet: bool = True,
) -> list[list[QuestionRows]]:
    """Every question's signal matrix and evidence labels, with ``first_stage`` weights (SIGNALS-long) feeding
    the second stage (None: the configured ones)."""
    out = []
    for conv, retriever in zip(conversations, retrievers, strict=True):
        started = time.perf_counter()
        alive_ids = [m for m in retriever._ids if m is not None]
        position = {m: i for i, m in enumerate(alive_ids)}
        rows = []
        for q in conv.questions:
            matrix, _ = retriever.signals(q.text, first_stage=first_stage)
            matrix = matrix[: len(alive_ids)]
            labels = np.zeros(len(alive_ids), dtype=bool)
            for e in q.evidence:
                if e in position:
                    labels[position[e]] = True
            rows.append(QuestionRows(q.category, matrix, labels, len(q.evidence)))
        out.append(rows)
        if not quiet:
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


def _newton(x: Floats, y: Floats, sample_weight: Floats, l2: float, intercept: bool, steps: int = 50) -> Floats:
    """Weighted, L2-regularised logistic regression by Newton's method (a handful of features: exact and quick)."""
    x1 = np.hstack([x, np.ones((len(x), 1))]) if intercept else x
    w = np.zeros(x1.shape[1])
    penalty = l2 * np.ones(x1.shape[1])
    if intercept:
        penalty[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x1 @ w)))
        gradient = x1.T @ (sample_weight * (p - y)) + penalty * w
        hessian = (x1 * (sample_weight * p * (1 - p))[:, None]).T @ x1 + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return np.asarray(w[:-1] if intercept else w, dtype=np.float64)


def fit_logistic(data: list[list[QuestionRows]], l2: float = 1e-3, steps: int = 50) -> Floats:
    """Pointwise: "is evidence" against the signals, each question weighing the same."""
    x, y, sample_weight = _training_rows(data)
    return _newton(x, y, sample_weight, l2, intercept=True, steps=steps)


def fit_pairwise(data: list[list[QuestionRows]], l2: float = 1e-2, pool: int = PAIR_POOL) -> Floats:
    """Pairwise: P(evidence above non-evidence) = sigmoid(w . (x_evidence - x_other)) over the hard pairs (the
    others among the pointwise fit's best ``pool``), each question weighing the same."""
    start = fit_logistic(data)
    differences, weights = [], []
    for rows in data:
        for q in rows:
            order = np.argsort(-(q.signals @ start))[:pool]
            negatives = order[~q.labels[order]]
            positives = np.flatnonzero(q.labels)
            if not len(positives) or not len(negatives):
                continue
            d = (q.signals[positives][:, None, :] - q.signals[negatives][None, :, :]).reshape(-1, q.signals.shape[1])
            differences.append(d)
            weights.append(np.full(len(d), 1.0 / len(d)))
    x = np.vstack(differences)
    return _newton(x, np.ones(len(x)), np.concatenate(weights), l2, intercept=False)


def normalised(w: Floats) -> Floats:
    top = float(np.abs(w).max()) or 1.0
    return np.asarray(w / top, dtype=np.float64)


def report(title: str, overall: Tally, by_category: dict[int, Tally]) -> None:
    print(
        f"{title}: pooled {overall.pooled:.3f} ({overall.found} of {overall.total})  mean {overall.mean:.3f}"
        f"  ({overall.questions} questions)"
    )
    for category in sorted(by_category):
        t = by_category[category]
        name = CATEGORIES.get(category, str(category))
        print(f"    {category} {name:<12} pooled {t.pooled:.3f}  mean {t.mean:.3f}  ({t.questions})")


def spread_rows(data: list[list[QuestionRows]]) -> list[list[QuestionRows]]:
    """The signals as the fusion reads them (retriever.spread); the first stage reads them unscaled."""
    return [[QuestionRows(q.category, spread(q.signals), q.labels, q.total) for q in rows] for rows in data]


def _columns(data: list[list[QuestionRows]], columns: list[int]) -> list[list[QuestionRows]]:
    return [[QuestionRows(q.category, q.signals[:, columns], q.labels, q.total) for q in rows] for rows in data]


def _merge(into: Tally, by_into: dict[int, Tally], overall: Tally, by_category: dict[int, Tally]) -> None:
    into.found += overall.found
    into.total += overall.total
    into.fractions.extend(overall.fractions)
    for category, t in by_category.items():
        target = by_into.setdefault(category, Tally())
        target.found += t.found
        target.total += t.total
        target.fractions.extend(t.fractions)


def weights_of(columns: list[int], w: Floats) -> FusionWeights:
    full = np.zeros(len(SIGNALS))
    full[columns] = normalised(w)
    return FusionWeights(**{name: round(float(v), 3) for name, v in zip(SIGNALS, full, strict=True)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--embedder", choices=["none", "onnx", "hashing"], default="none")
    parser.add_argument("--model", default="")
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--objective", choices=["pairwise", "logistic"], default="pairwise")
    parser.add_argument("--l2", type=float, default=1e-2, help="pairwise L2 (the pointwise fits use 1e-3)")
    parser.add_argument(
        "--incremental", action="store_true", help="index the memories one at a time, as a loaded retriever does"
    )
    parser.add_argument("--scheduler", default="", help="retrieval settings as JSON, e.g. '{\"feedback_docs\": 0}'")
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"LoCoMo data not found at {args.path}; skipping (see bench/RESULTS.md for how to get it)")
        return 0
    if args.embedder == "onnx" and not args.model:
        args.model, args.tokenizer = bundled_minilm()
    embedder = EmbedderConfig(kind=args.embedder, model=args.model, tokenizer=args.tokenizer, threads=2)
    config = RetrievalConfig(embedder=embedder, **(json.loads(args.scheduler) if args.scheduler else {}))
    conversations = load(args.path)
    retrievers = [build(conv, config, args.incremental)[0] for conv in conversations]
    data = collect(conversations, retrievers, quiet=False)
    dense = args.embedder != "none"
    columns = [i for i, name in enumerate(SIGNALS) if dense or "dense" not in name]
    first_columns = [i for i in FIRST_STAGE if i in columns]
    second = fit_pairwise if args.objective == "pairwise" else fit_logistic

    def fit_second(train: list[list[QuestionRows]]) -> Floats:
        return second(train, args.l2) if args.objective == "pairwise" else fit_logistic(train)

    lexical_only = np.zeros(len(SIGNALS))
    lexical_only[SIGNALS.index("lexical")] = 1.0
    report("lexical only (BM25)", *recall(data, lexical_only))
    shipped = config.dense_weights if dense else config.weights
    report("shipped weights", *recall(spread_rows(data), weight_vector(shipped)))
    report("shipped first stage alone", *recall(data, weight_vector(config.first_stage)))

    held_out = Tally()
    held_by_category: dict[int, Tally] = {}
    for i, conv in enumerate(conversations):
        first = np.zeros(len(SIGNALS))
        first[first_columns] = fit_logistic(_columns(data[:i] + data[i + 1 :], first_columns))
        fold = _columns(spread_rows(collect(conversations, retrievers, first)), columns)
        w = fit_second(fold[:i] + fold[i + 1 :])
        overall, by_category = recall([fold[i]], w)
        print(f"  held out {conv.sample_id}: pooled {overall.pooled:.3f}  weights {np.round(normalised(w), 3)}")
        _merge(held_out, held_by_category, overall, by_category)
    report("leave-one-conversation-out (held-out figure)", held_out, held_by_category)

    first = np.zeros(len(SIGNALS))
    first[first_columns] = fit_logistic(_columns(data, first_columns))
    every = _columns(spread_rows(collect(conversations, retrievers, first)), columns)
    w_all = fit_second(every)
    report("fitted on all (in-sample, for reference only)", *recall(every, w_all))
    print(f"first_stage to ship: {weights_of(first_columns, first[first_columns])!r}")
    print(f"weights to ship ({'dense_weights' if dense else 'weights'}): {weights_of(columns, w_all)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
