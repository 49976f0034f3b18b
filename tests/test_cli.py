"""The ``memsched`` client subcommands (submit, watch, status, memory, health) against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from memsched_client import MemschedClient

from memsched_grpc.cli import main
from tests.conftest import ROOT

PET = json.loads((ROOT / "examples" / "mem_scheduler" / "pet_conversation.json").read_text())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def address(make_server: Any) -> str:
    server, _ = make_server()
    return str(server.address)


def test_submit_chat_transcript_then_memory_status_and_watch(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = tmp_path / "pet.json"
    chat.write_text(json.dumps({"conversations": PET["conversations"][:6]}))
    code, out, _ = run(capsys, "submit", str(chat), "--address", address, "--user", "ann", "--cube", "pets", "--wait")
    assert code == 0
    assert out.strip() == "6 items, 6 stored, 0 duplicates, 0 rejected, 6 completed, 0 failed"

    # the same file again: deterministic item ids make the import idempotent
    code, out, _ = run(capsys, "submit", str(chat), "--address", address, "--user", "ann", "--cube", "pets", "--json")
    assert code == 0 and json.loads(out) == {"items": 6, "stored": 6, "duplicates": 6, "rejected": 0}

    query = tmp_path / "q.jsonl"
    query.write_text(json.dumps({"label": "query", "content": "What's my dog's name again?", "task_id": "q1"}) + "\n")
    code, out, _ = run(capsys, "submit", str(query), "--address", address, "--user", "ann", "--cube", "pets", "--wait")
    assert code == 0

    code, out, _ = run(capsys, "memory", "--address", address, "--user", "ann", "--cube", "pets", "--type", "working")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "WorkingMemory: 6 / 20"
    assert "His name is Max" in out and len(lines) == 7

    code, out, _ = run(capsys, "memory", "--address", address, "--user", "ann", "--cube", "pets", "--json")
    sizes = json.loads(out)["sizes"]
    assert (sizes["user_memory_size"], sizes["long_term_memory_size"]) == (3, 3)

    code, out, _ = run(capsys, "status", "--address", address, "--task", "q1")
    assert code == 0 and out.startswith("task q1: completed")
    code, out, _ = run(capsys, "status", "--address", address)
    assert "1 cube(s); pending items: 0" in out and "ann/pets: pending 0, working 6" in out

    code, out, _ = run(
        capsys, "watch", "--address", address, "--user", "ann", "--replay", "100", "--count", "7", "--seconds", "30"
    )
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 7
    assert "ann/pets  addMemory       UserInput → UserMemory" in lines[0]
    assert "I just adopted a golden retriever puppy yesterday." in lines[0] and "[WM 1/20" in lines[0]
    assert "addMessage" in lines[6] and "What's my dog's name again?" in lines[6]

    code, out, _ = run(
        capsys,
        "watch",
        "--address",
        address,
        "--user",
        "ann",
        "--replay",
        "2",
        "--count",
        "1",
        "--json",
        "--seconds",
        "30",
    )
    assert json.loads(out)["user_id"] == "ann"


def test_submit_reports_rejections_and_bad_input(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = tmp_path / "items.jsonl"
    lines.write_text(
        json.dumps({"user_id": "u1", "mem_cube_id": "c1", "content": "good"})
        + "\n\n"
        + json.dumps({"user_id": "u1", "mem_cube_id": "c1", "label": "nope", "content": "bad label"})
        + "\n"
    )
    code, out, err = run(capsys, "submit", str(lines), "--address", address)
    assert code == 1
    assert out.strip() == "2 items, 1 stored, 0 duplicates, 1 rejected"
    assert "INVALID_ARGUMENT): label:" in err

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user_id": "u1"\n')
    code, _, err = run(capsys, "submit", str(broken), "--address", address)
    assert code == 2 and "broken.jsonl:1:" in err

    code, _, err = run(capsys, "status", "no-such-item", "--address", address)
    assert code == 1 and "NOT_FOUND" in err


def test_health_and_unreachable_server(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "health", "--address", address)[:2] == (0, "SERVING\n")
    assert run(capsys, "health", "--address", address, "--service", "nope")[:2] == (1, "SERVICE_UNKNOWN\n")
    code, _, err = run(capsys, "health", "--address", "127.0.0.1:1", "--timeout", "0.5")
    assert code == 3 and "cannot reach" in err


def test_submit_large_import_shows_progress_from_stdin(address: str) -> None:
    """A 2,000-item import through the installed console script, read from standard input."""
    body = "".join(
        json.dumps({"user_id": "bulk", "mem_cube_id": f"c{n % 4}", "content": f"memory number {n} about topic {n}"})
        + "\n"
        for n in range(2000)
    )
    result = subprocess.run(
        [sys.executable, "-m", "memsched_grpc.cli", "submit", "--address", address, "--progress", "always"],
        input=body,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2000 items, 2000 stored, 0 duplicates, 0 rejected"
    assert "stored: 100%" in result.stderr and "2000/2000" in result.stderr


def test_submit_chat_as_dialogue_sends_queries_and_answers(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(PET["conversations"][:4]))
    args = ["submit", str(chat), "--address", address, "--user", "bo", "--cube", "c", "--dialogue", "--wait"]
    assert run(capsys, *args)[:2] == (0, "4 items, 4 stored, 0 duplicates, 0 rejected, 4 completed, 0 failed\n")
    with MemschedClient(address) as client:
        state = client.get_cube_state("bo", "c")
    assert (state.queries, state.answers) == (2, 2)
    assert state.query_window == [PET["conversations"][0]["content"], PET["conversations"][2]["content"]]
