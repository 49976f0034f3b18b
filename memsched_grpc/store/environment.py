"""One LMDB environment: opening with the project's options, transactions, and the one grow-and-retry path."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from memsched_grpc.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_DBS = 16
MAX_READERS = 512
MAX_GROWTHS_PER_WRITE = 8


def as_bytes(value: bytes | memoryview) -> bytes:
    """Transactions here never use buffers=True, so LMDB hands out bytes; this narrows py-lmdb's type."""
    assert isinstance(value, bytes)
    return value


class Environment:
    """An LMDB environment opened once per process (py-lmdb refuses a second open in one process).

    ``max_dbs`` and ``max_readers`` are fixed by the first opener, so every process opens with the
    constants above. Writes go through :meth:`write`, which grows the map and retries on MapFullError.

    ``writemap`` makes LMDB write pages through its shared mapping instead of ``pwrite``. On this kind of
    kernel (6.x, ext4) that writes about a fifth of the bytes per commit: a buffered ``pwrite`` of a commit's run
    of consecutive pages puts a large folio into the page cache, and every later commit that dirties one page of
    it writes back the whole folio; a mapping's faults dirty single pages. The faults cost CPU in turn (~50 µs a
    small commit), so it is a choice for disks that are busy or wear, not a default. The mapping covers a sparse file,
    and a fault on a hole the full disk cannot fill kills the process with SIGBUS; so the whole map is
    allocated on disk when opened and before each growth, and a full disk stays a StorageError. LMDB refuses
    nested transactions with ``writemap``, so only environments that use none may set it.
    """

    def __init__(
        self, path: Path, map_size: int, sync: bool, db_names: tuple[str, ...], writemap: bool = False
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.writemap = writemap
        self._grow_lock = threading.Lock()
        try:
            self.env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=MAX_DBS,
                max_readers=MAX_READERS,
                sync=sync,
                metasync=sync,
                readahead=False,
                lock=True,
                writemap=writemap,
            )
        except lmdb.Error as e:
            raise StorageError(f"cannot open LMDB environment {path}: {e}") from e
        if writemap:
            try:
                self._allocate(self.env.info()["map_size"])
            except StorageError:
                self.env.close()
                raise
        # A process killed while reading leaves its slot taken; clear such slots before anyone waits on them.
        stale = self.env.reader_check()
        if stale:
            log.warning("cleared %d stale LMDB reader slots in %s", stale, path)
        self.dbs: dict[str, Any] = {}
        with self.env.begin(write=True) as txn:
            for name in db_names:
                self.dbs[name] = self.env.open_db(name.encode(), txn=txn, create=True)

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction and commit; ``fn`` may run again after the map grew."""
        for _ in range(MAX_GROWTHS_PER_WRITE):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.grow()
            except lmdb.MapResizedError:
                self._adopt_size()
            except lmdb.Error as e:
                # The transaction was aborted whole: what is committed stays intact and readable.
                free = shutil.disk_usage(self.path).free
                hint = f"disk full ({free} bytes free)" if free < (1 << 20) else f"{free} bytes free"
                raise StorageError(f"write to {self.path} failed, nothing of it was stored: {e}; {hint}") from e
        raise StorageError(f"LMDB map of {self.path} could not grow enough for one transaction")

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read-only snapshot; values must be copied out before the block ends."""
        try:
            txn = self.env.begin(buffers=False)
        except lmdb.MapResizedError:
            self._adopt_size()
            txn = self.env.begin(buffers=False)
        try:
            yield txn
        finally:
            txn.abort()

    def grow(self) -> None:
        with self._grow_lock:
            size = self.env.info()["map_size"] * 2
            log.info("growing LMDB map of %s to %d MiB", self.path, size // (1 << 20))
            if self.writemap:
                self._allocate(size)
            self.env.set_mapsize(size)

    def _allocate(self, size: int) -> None:
        """Give the data file's first ``size`` bytes real disk blocks (see the class docstring)."""
        fd = os.open(self.path / "data.mdb", os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            free = shutil.disk_usage(self.path).free
            raise StorageError(
                f"cannot allocate {size >> 20} MiB on disk for the LMDB map of {self.path} ({free} bytes free): {e}"
            ) from e
        finally:
            os.close(fd)

    def _adopt_size(self) -> None:
        """Another process grew the map: take its size (0 means 'the current size on disk')."""
        with self._grow_lock:
            self.env.set_mapsize(0)

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
