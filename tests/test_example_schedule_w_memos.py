"""examples/mem_scheduler/schedule_w_memos.py: both initialisations, and the five pet questions.

For each question, the memory that holds the expected answer (Max; golden retriever; peanut butter
biscuits; near Central Park in New York; nuts) must be in the cube's working memory after the query.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "mem_scheduler" / "schedule_w_memos.py"
EXPECTED = ["Max", "golden retriever", "peanut butter biscuits", "near Central Park in New York", "nuts"]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("schedule_w_memos", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_manual_initialisation_surfaces_every_answer(tmp_path: Path) -> None:
    example = load_example()
    printed: list[str] = []
    results = example.run_manual(tmp_path, out=printed.append)
    assert [r.expected for r in results] == EXPECTED
    for r in results:
        assert r.answered, f"{r.expected!r} not in working memory after {r.question!r}: {r.working_memory}"
        holder = next(m for m in r.working_memory if r.expected.lower() in m.lower())
        assert f"Q: {r.question}" in printed and any(holder in line for line in printed)
    assert printed[-1] == "5/5 expected answers were in working memory after their query"
    # each question is followed by its working memory, then its web logs (the query's addMessage first)
    q = printed.index("Q: What's my dog's name again?")
    assert printed[q + 1] == "  working memory:"
    logs_at = next(i for i in range(q, len(printed)) if printed[i].startswith("  web logs"))
    assert "[addMessage] UserInput -> NotApplicable: [User] What's my dog's name again?" in printed[logs_at + 1]


def test_automatic_initialisation_from_yaml_runs_as_a_script(tmp_path: Path) -> None:
    """The script itself, as a user runs it: the server comes from config.yaml in a subprocess."""
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "--mode", "auto", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "== automatic initialisation: server from config.yaml" in out
    assert out.count("\nQ: ") == 5 and out.count("  working memory:") == 5
    assert "5/5 expected answers were in working memory after their query" in out
    assert "[scheduleMemory] LongTermMemory -> WorkingMemory" in out
