"""Where a local model's files are: a path in the Hugging Face layout or a model id in the local cache.

Kept apart from the embedder so configuration can check the files at load time (a server with a misspelt model
path refuses to start instead of failing every query) without importing onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

MODEL_CANDIDATES = ("model.onnx", "onnx/model.onnx", "model_quantized.onnx", "onnx/model_quantized.onnx")


class ModelNotFound(ValueError):
    """No model (or tokenizer) file where the configuration points."""


def _looks_like_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def cached_hub_model(model_id: str) -> Path:
    """The local snapshot of a Hugging Face model id, without any network access."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelNotFound(f"{model_id!r} is not a path, and huggingface_hub is not installed to resolve it") from e
    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception as e:  # the hub raises many kinds; all mean "not in the local cache"
        raise ModelNotFound(f"{model_id!r} is not a path nor a model in the local Hugging Face cache: {e}") from e


def model_file(model: str) -> Path:
    """The .onnx file ``model`` names: the file itself, or model.onnx (or onnx/model.onnx) in a directory."""
    if not model:
        raise ModelNotFound("embedder.model is empty: name a .onnx file, a model directory or a cached model id")
    path = cached_hub_model(model) if _looks_like_id(model) else Path(model).expanduser()
    if path.is_file():
        return path
    for candidate in MODEL_CANDIDATES:
        if (path / candidate).is_file():
            return path / candidate
    raise ModelNotFound(f"no ONNX model at {model!r} (looked for {', '.join(MODEL_CANDIDATES)})")


def tokenizer_file(tokenizer: str) -> Path:
    """The tokenizer.json ``tokenizer`` names: the file, or tokenizer.json in the directory (or its parent, for a
    model kept in an onnx/ subdirectory)."""
    path = cached_hub_model(tokenizer) if _looks_like_id(tokenizer) else Path(tokenizer).expanduser()
    if path.is_file():
        return path
    for candidate in (path / "tokenizer.json", path.parent / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    raise ModelNotFound(f"no tokenizer.json at {tokenizer!r}")
