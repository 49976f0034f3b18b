"""The set of shard environments a process uses, opened on first use (each at most once per process)."""

from __future__ import annotations

import threading

from memsched_grpc.config import StorageConfig
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import CubeTables


class ShardSet:
    def __init__(self, storage: StorageConfig, shards: int) -> None:
        self.storage = storage
        self.count = shards
        self._tables: dict[int, CubeTables] = {}
        self._lock = threading.Lock()

    def tables(self, shard: int) -> CubeTables:
        tables = self._tables.get(shard)
        if tables is None:
            with self._lock:
                tables = self._tables.get(shard)
                if tables is None:
                    s = self.storage
                    tables = CubeTables.open(s.data_dir, shard, s.map_size_mb << 20, s.sync)
                    self._tables[shard] = tables
        return tables

    def shard_of(self, user_id: str, mem_cube_id: str) -> int:
        return keys.shard_of(user_id, mem_cube_id, self.count)

    def for_cube(self, user_id: str, mem_cube_id: str) -> CubeTables:
        return self.tables(self.shard_of(user_id, mem_cube_id))

    def all(self) -> list[CubeTables]:
        return [self.tables(i) for i in range(self.count)]

    def close(self) -> None:
        with self._lock:
            for tables in self._tables.values():
                tables.env.close()
            self._tables.clear()
