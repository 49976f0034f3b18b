"""A loaded cube's in-memory indexes, saved when a worker stops and restored by the cube's next load.

Loading a cube builds its entries, term index and retriever from every memory record: ~0.9 s for a 10k-memory
cube (reading and parsing the records, tokenizing, indexing each memory in Python, fitting the latent space), paid
by the first query of every cube after each restart. A worker that stops gracefully saves what it built; the next
load reads it back instead (~0.1 s for a 10k cube whose pages are not cached: ~15 MB read, ~50 ms to unpickle).

A snapshot is only ever the cube's memories as committed:
- it is written from a cube the worker holds, which equals what is committed (a rolled-back transaction drops the
  cube, see worker.py), after the worker's last transaction;
- it counts only while its token is in the shard's snapshot table, and every write of the cube's memories deletes
  the token in the same transaction (CubeTables.get_snapshot), so a snapshot older than a memory write cannot
  survive a commit, crash or not;
- it names the exact code that wrote it (a digest of the package's sources and of the libraries whose output it
  holds: stems, arrays); a snapshot of other code, or whose memory count is not the cube's, is ignored and the cube
  is built from its records as before.

The payload is a pickle: the worker's own objects (numpy arrays, dicts, the retriever's state), written and read by
the same code (checked, above) from the service's own data directory, which is trusted as the rest of it is (whoever
can write there can change every memory).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MAGIC = b"MSNP\x01"
_LIBRARIES = ("numpy", "snowballstemmer", "PyStemmer", "pydantic")


@dataclass(slots=True)
class CubeSnapshot:
    """What Cube.load would build from the records (everything but the state and the use counts, which the load
    reads as it always does): entries, term index, fingerprints and the retriever's state with its config."""

    entries: dict[str, Any]
    terms: Any
    by_fingerprint: dict[bytes, str]
    last_sequence: int
    retriever: tuple[str, dict[str, Any]] | None
    """The retriever's config as JSON and its state (Retriever.export_state), when the cube had built one."""


@lru_cache(maxsize=1)
def code_digest() -> bytes:
    """The package's sources, the Python version and the versions of the libraries whose results a snapshot holds:
    any change to them makes every snapshot stale."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(sys.version.encode())
    for name in _LIBRARIES:
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=-".encode())
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.digest()


def encode(snapshot: CubeSnapshot) -> bytes:
    return _MAGIC + code_digest() + pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)


def decode(raw: bytes, memories: int) -> CubeSnapshot | None:
    """The snapshot in ``raw``, or None when other code wrote it, it is damaged, or it does not hold ``memories``
    memories (the count the cube's state records)."""
    head = len(_MAGIC) + 16
    if raw[: len(_MAGIC)] != _MAGIC or raw[len(_MAGIC) : head] != code_digest():
        log.debug("cube snapshot written by other code; building the cube from its records")
        return None
    try:
        snapshot = pickle.loads(raw[head:])
    except Exception:
        log.warning("damaged cube snapshot; building the cube from its records", exc_info=True)
        return None
    if not isinstance(snapshot, CubeSnapshot) or len(snapshot.entries) != memories:
        log.warning("cube snapshot does not match the cube's state; building the cube from its records")
        return None
    return snapshot
