"""Label -> handler registry. A handler takes a HandlerContext: one message of its label for one cube.

Adding a label is one step: name a function in the ``handlers`` setting (``label: "pkg.module:function"``);
every worker imports it at boot and the servicer starts accepting the label.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from memsched_grpc.errors import ConfigError
from memsched_grpc.handlers import add, answer, query, queued
from memsched_grpc.handlers.base import Handler, HandlerContext

__all__ = ["Handler", "HandlerContext", "build_registry", "registered_labels"]

BUILTIN: dict[str, Handler] = {
    "query": query.handle,
    "answer": answer.handle,
    "add": add.handle,
    **queued.HANDLERS,
}


def _import(spec: str, label: str) -> Handler:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"handlers.{label}: {spec!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"handlers.{label}: cannot import {spec!r}: {e}") from e
    if not callable(fn):
        raise ConfigError(f"handlers.{label}: {spec!r} is not callable")
    handler: Handler = fn
    return handler


def build_registry(custom: Mapping[str, str]) -> dict[str, Handler]:
    """The built-in handlers, with ``custom`` (label -> import spec) added or replacing them."""
    registry = dict(BUILTIN)
    for label, spec in custom.items():
        if not label:
            raise ConfigError("handlers: a label must not be empty")
        registry[label] = _import(spec, label)
    return registry


def registered_labels(custom: Mapping[str, str]) -> list[str]:
    return sorted(set(BUILTIN) | set(custom))
