"""MemOS's ``examples/mem_scheduler/schedule_w_memos.py``, against the memsched service.

The MemOS example adds a short conversation about a golden retriever to a memory cube, then asks five
questions; for each it shows the working memory the scheduler surfaced and the web logs it produced.
Here the scheduler is the memsched gRPC service, and MemOS's side is played by
``memsched_client.RemoteMemScheduler``, which has the in-process scheduler's interface (``start``,
``submit_messages``, ``get_web_log_messages``, ``stop``). Two ways to set it up, as in MemOS:

- automatic initialisation: a server started from a YAML config (``config.yaml`` beside this file) as a
  subprocess, and a scheduler client pointed at it;
- manual initialisation: settings, server, client and every message built explicitly in code.

    python examples/mem_scheduler/schedule_w_memos.py                 # both
    python examples/mem_scheduler/schedule_w_memos.py --mode auto     # or manual

The conversation and questions (pet_conversation.json) come from the MemOS example (Apache-2.0).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memsched_client import MemschedClient, RemoteMemScheduler, ScheduleMessageItem

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
CONVERSATION = HERE / "pet_conversation.json"
USER_ID = "pet_owner"
MEM_CUBE_ID = "mem_cube_pets"

Printer = Callable[[str], None]


@dataclass
class QuestionResult:
    """What the scheduler put in working memory for one question."""

    question: str
    expected: str
    working_memory: list[str]

    @property
    def answered(self) -> bool:
        """True when a working memory holds the expected answer."""
        return any(self.expected.lower() in memory.lower() for memory in self.working_memory)


def load_conversation(path: Path = CONVERSATION) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["conversations"], data["questions"]


def reply_to(conversation: list[dict[str, str]], question: str) -> str:
    """The assistant's reply to ``question`` in the conversation: what MemOS's chat would have answered."""
    for turn, following in itertools.pairwise(conversation):
        if turn["role"] == "user" and turn["content"] == question and following["role"] == "assistant":
            return following["content"]
    return ""


def print_web_logs(logs: list[dict[str, Any]], out: Printer) -> None:
    out(f"  web logs ({len(logs)}):")
    for log in logs:
        sizes = log["current_memory_sizes"]
        out(
            f"    [{log['label']}] {log['from_memory_type']} -> {log['to_memory_type']}: {log['log_content']}"
            f"  (working {sizes['working_memory_size']}, long-term {sizes['long_term_memory_size']},"
            f" user {sizes['user_memory_size']})"
        )


def run_conversation(
    scheduler: RemoteMemScheduler,
    client: MemschedClient,
    messages: Callable[[str, str], ScheduleMessageItem],
    out: Printer = print,
) -> list[QuestionResult]:
    """Add the conversation, then ask each question: print it, the working memory after the query, the web
    logs. ``messages(label, content)`` builds the ScheduleMessageItems (the two modes build them differently)."""
    conversation, questions = load_conversation()
    scheduler.submit_messages(messages("add", json.dumps(conversation, ensure_ascii=False)))
    if not scheduler.wait_until_handled(timeout=60):
        raise TimeoutError("the conversation was not added within 60 s")
    out(f"added {len(conversation)} conversation turns to {USER_ID}/{MEM_CUBE_ID}")
    print_web_logs(scheduler.get_web_log_messages(), out)

    results = []
    for entry in questions:
        question = entry["question"]
        out("")
        out(f"Q: {question}")
        scheduler.submit_messages(messages("query", question))
        if not scheduler.wait_until_handled(timeout=60):
            raise TimeoutError(f"query {question!r} was not handled within 60 s")
        working = [m.memory for m in client.working_memory(USER_ID, MEM_CUBE_ID)]
        out("  working memory:")
        for n, memory in enumerate(working, start=1):
            out(f"    {n:>2}. {memory}")
        answer = reply_to(conversation, question)
        if answer:
            out(f"A: {answer}")
            scheduler.submit_messages(messages("answer", answer))
            scheduler.wait_until_handled(timeout=60)
        print_web_logs(scheduler.get_web_log_messages(), out)
        results.append(QuestionResult(question, entry["expected"], working))
    found = sum(r.answered for r in results)
    out("")
    out(f"{found}/{len(results)} expected answers were in working memory after their query")
    return results


# automatic initialisation: a server from the YAML config, in a subprocess


@contextmanager
def server_from_config(config: Path, data_dir: Path) -> Iterator[str]:
    """Run ``memsched serve --config`` until the block ends; yields the address it listens on."""
    port_file = data_dir / "port"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "memsched_grpc.cli", "serve", "--config", str(config)]
    command += ["--data-dir", str(data_dir / "data"), "--port-file", str(port_file)]
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            if proc.poll() is not None:
                raise RuntimeError(f"memsched serve exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError("memsched serve did not start within 60 s")
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()  # SIGTERM: the server drains and stops
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_auto(data_dir: Path, config: Path = CONFIG, out: Printer = print) -> list[QuestionResult]:
    out(f"== automatic initialisation: server from {config.name}, RemoteMemScheduler from its address ==")
    with server_from_config(config, data_dir) as address:
        scheduler = RemoteMemScheduler(address)
        scheduler.start()
        try:

            def message(label: str, content: str) -> ScheduleMessageItem:
                return ScheduleMessageItem(user_id=USER_ID, mem_cube_id=MEM_CUBE_ID, label=label, content=content)

            return run_conversation(scheduler, scheduler.client, message, out)
        finally:
            scheduler.stop()


# manual initialisation: settings, server, client and messages in code


def run_manual(data_dir: Path, out: Printer = print) -> list[QuestionResult]:
    # imported here: the server side is only needed when this process hosts the server
    from memsched_grpc.config import load_settings
    from memsched_grpc.server import SchedulerServer

    out("== manual initialisation: settings, server, client and messages built in code ==")
    settings = load_settings(
        server={"address": "127.0.0.1:0"},
        storage={"data_dir": str(data_dir / "data"), "map_size_mb": 64},
        workers={"count": 2},
        scheduler={
            "top_k": 10,
            "context_window_size": 5,
            "capacities": {"working_memory_capacity": 20},
        },
    )
    server = SchedulerServer(settings)
    server.start()  # spawns the workers, then listens
    client = MemschedClient(server.address, timeout=30)
    scheduler = RemoteMemScheduler(client=client, ack_timeout=30)
    try:
        client.wait_ready()
        scheduler.start()
        session_id = f"session-{uuid.uuid4().hex[:8]}"

        def message(label: str, content: str) -> ScheduleMessageItem:
            return ScheduleMessageItem(
                item_id=str(uuid.uuid4()),
                user_id=USER_ID,
                mem_cube_id=MEM_CUBE_ID,
                label=label,
                mem_cube=MEM_CUBE_ID,
                content=content,
                timestamp=datetime.now(UTC),
                session_id=session_id,
                user_name="Pet owner",
                info={"source": "schedule_w_memos", "mode": "manual"},
            )

        return run_conversation(scheduler, client, message, out)
    finally:
        scheduler.stop()
        client.close()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=["auto", "manual", "both"], default="both")
    parser.add_argument("--data-dir", type=Path, help="where the servers keep their data (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="memsched-example-") as tmp:
        base = args.data_dir or Path(tmp)
        results: list[QuestionResult] = []
        if args.mode in ("auto", "both"):
            results += run_auto(base / "auto")
        if args.mode in ("manual", "both"):
            print()
            results += run_manual(base / "manual")
    return 0 if all(r.answered for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
