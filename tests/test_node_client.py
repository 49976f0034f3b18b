"""The TypeScript client (clients/node): compile it and run its bidirectional example against a real server.

.ci/run installs the Node dependencies (`npm ci --prefix clients/node`); on a developer machine where they
are missing, this test installs them the same way (from package-lock.json). It skips only when node or
npm itself is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from tests.conftest import ROOT

NODE_DIR = ROOT / "clients" / "node"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="node and npm are needed (Debian: nodejs npm)"
)


@pytest.fixture(scope="module")
def built_example() -> str:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    build = subprocess.run(["npm", "run", "build"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return str(NODE_DIR / "dist" / "examples" / "bidi.js")


def test_node_bidirectional_example(make_server: Any, built_example: str) -> None:
    server, client = make_server()
    run = subprocess.run(
        ["node", built_example, server.address, "node-user", "pets"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    # the add and the query acknowledged, the item without user_id rejected in-band, both completed
    assert (summary["acks"], summary["rejections"], summary["completions"]) == (2, 1, 2)
    assert summary["queryStatus"] == "TASK_STATUS_COMPLETED"
    assert any("His name is Max" in text for text in summary["working"])
    assert any(line.startswith("rejected") and "user_id" in line for line in lines)
    # the unary Submit's INVALID_ARGUMENT carries a google.rpc.BadRequest that the Node client decodes
    assert summary["violations"] == ["items[1].user_id: is required and must not be empty"]
    # what the Node client wrote is what the server holds
    assert sorted(client.working_texts("node-user", "pets")) == sorted(summary["working"])
