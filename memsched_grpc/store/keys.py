"""Byte layout of LMDB keys. Ids never contain control characters (validation refuses them),
so the separators below cannot occur inside an id."""

from __future__ import annotations

import zlib

from memsched_grpc.models import MemoryType

CUBE_SEP = b"\x1f"
PART_SEP = b"\x1e"

_TYPE_CODES: dict[MemoryType, bytes] = {
    MemoryType.LONG_TERM: b"L",
    MemoryType.USER: b"U",
}


def cube_key(user_id: str, mem_cube_id: str) -> bytes:
    return user_id.encode() + CUBE_SEP + mem_cube_id.encode()


def shard_of(user_id: str, mem_cube_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike hash())."""
    return zlib.crc32(cube_key(user_id, mem_cube_id)) % shards


def memory_prefix(cube: bytes, memory_type: MemoryType) -> bytes:
    return cube + PART_SEP + _TYPE_CODES[memory_type] + PART_SEP


def memory_key(cube: bytes, memory_type: MemoryType, memory_id: str) -> bytes:
    return memory_prefix(cube, memory_type) + memory_id.encode()


def history_prefix(cube: bytes) -> bytes:
    return cube + PART_SEP


def history_key(cube: bytes, seq: int) -> bytes:
    return history_prefix(cube) + seq.to_bytes(8, "big")


def usage_prefix(cube: bytes) -> bytes:
    return cube + PART_SEP


def usage_key(cube: bytes, chunk: int) -> bytes:
    return usage_prefix(cube) + chunk.to_bytes(4, "big")


def seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")
