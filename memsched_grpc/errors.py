"""Domain exceptions; status.py is the one place they become gRPC status codes."""

from __future__ import annotations


class MemschedError(Exception):
    """Base of every error memsched raises on purpose."""


class ConfigError(MemschedError):
    """The configuration is invalid; the message names the key and the rule."""


class InvalidItem(MemschedError):
    """An incoming item breaks a rule; ``field`` and ``rule`` say which."""

    def __init__(self, field: str, rule: str, item_id: str = "", index: int = 0) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
        self.item_id = item_id
        self.index = index


class InvalidRequest(MemschedError):
    """A request (not an item) breaks a rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class Overloaded(MemschedError):
    """The backlog of accepted, unfinished items is at its limit."""


class ShuttingDown(MemschedError):
    """The server no longer accepts work."""


class NotFound(MemschedError):
    """The item or task asked about is unknown."""


class StorageError(MemschedError):
    """LMDB refused an operation (disk full, for example); nothing was half-written."""


class PermanentError(MemschedError):
    """A handler error that no retry can fix (malformed content, for example): the item fails at once."""
