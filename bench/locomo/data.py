"""Reading LoCoMo conversations as a memsched client sends them, and scoring evidence recall.

The data file is read from the shared folder (its licence, CC BY-NC 4.0, keeps it out of this repository).
Each turn becomes one chat message whose metadata carries generic keys any MemOS client can send:
``speaker``, ``session_id``, ``session_date`` and, for a shared photo, ``image_caption``; ``dia_id`` lets the
benchmark recognise the turn in working memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = ROOT.parent / "shared" / "data" / "locomo" / "locomo_dev.json"
DIA_ID = re.compile(r"D\d+:\d+")
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass
class Turn:
    dia_id: str
    speaker: str
    text: str
    session: int
    session_date: str
    caption: str = ""

    def message(self, prefix: str = "") -> dict[str, Any]:
        """The chat message a client adds for this turn (content plus generic metadata); ``prefix`` goes before its
        ids, so that turns of several conversations can share a cube."""
        dia_id = prefix + self.dia_id
        metadata: dict[str, Any] = {
            "dia_id": dia_id,
            "speaker": self.speaker,
            "session_id": f"{prefix}session_{self.session}",
            "session_date": self.session_date,
        }
        if self.caption:
            metadata["image_caption"] = self.caption
        return {"role": "user", "content": self.text, "id": dia_id, "metadata": metadata}


@dataclass
class Question:
    text: str
    category: int
    evidence: list[str]


@dataclass
class Conversation:
    sample_id: str
    sessions: list[list[Turn]]
    questions: list[Question] = field(default_factory=list)

    @property
    def turns(self) -> list[Turn]:
        return [t for s in self.sessions for t in s]


def valid_evidence(ids: list[Any]) -> list[str]:
    """Evidence ids of the D<session>:<turn> form, unique; malformed ones ("D", "D:11:26", "D8:6; D9:17") are
    skipped as the data's README asks."""
    return list(dict.fromkeys(str(e) for e in ids if isinstance(e, str) and DIA_ID.fullmatch(e)))


def load(path: Path) -> list[Conversation]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for sample in raw:
        conv = sample["conversation"]
        numbers = sorted(
            int(k.split("_")[1]) for k in conv if re.fullmatch(r"session_\d+", k) and isinstance(conv[k], list)
        )
        sessions = []
        for n in numbers:
            date = str(conv.get(f"session_{n}_date_time", ""))
            turns = []
            for t in conv[f"session_{n}"]:
                text = str(t.get("text", "")).strip()
                caption = str(t.get("blip_caption", "") or "").strip()
                if not text and caption:
                    text = caption
                if text:
                    turns.append(Turn(str(t["dia_id"]), str(t.get("speaker", "")), text, n, date, caption))
            sessions.append(turns)
        questions = []
        for qa in sample.get("qa", []):
            evidence = valid_evidence(qa.get("evidence", []))
            if evidence:
                questions.append(Question(str(qa["question"]), int(qa.get("category", 0)), evidence))
        out.append(Conversation(str(sample.get("sample_id", len(out))), sessions, questions))
    return out


@dataclass
class Tally:
    """Evidence recall, pooled (found / all) and per question (mean of per-question fractions)."""

    found: int = 0
    total: int = 0
    fractions: list[float] = field(default_factory=list)

    def add(self, found: int, total: int) -> None:
        self.found += found
        self.total += total
        self.fractions.append(found / total)

    @property
    def pooled(self) -> float:
        return self.found / self.total if self.total else 0.0

    @property
    def mean(self) -> float:
        return sum(self.fractions) / len(self.fractions) if self.fractions else 0.0

    @property
    def questions(self) -> int:
        return len(self.fractions)
