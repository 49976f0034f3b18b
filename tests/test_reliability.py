"""Nothing accepted is lost, failures are honest, overload pushes back: faults with real processes."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.store.environment import Environment
from tests.conftest import Client, collect, item


def test_poison_item_fails_after_bounded_retries_and_can_be_redriven(client: Client, record_dir: Path) -> None:
    (record_dir / "broken").touch()
    poison = item(cube="fragile", label="flaky", content="needs the dependency", task_id="import-7")
    behind = item(cube="fragile", label="record", content="queued behind it")
    elsewhere = item(cube="other", label="record", content="another cube")
    got = collect(client.session([poison, behind, elsewhere]))
    done = {c.item_id: c for c in got["completions"]}
    assert done[poison.item_id].status == items_pb2.TASK_STATUS_FAILED
    assert "RuntimeError: dependency is down" in done[poison.item_id].error
    assert done[behind.item_id].status == items_pb2.TASK_STATUS_COMPLETED
    assert done[elsewhere.item_id].status == items_pb2.TASK_STATUS_COMPLETED
    status = client.status(poison.item_id).items[0]
    assert status.status == items_pb2.TASK_STATUS_FAILED and status.attempts == 3

    dead = client.stub.ListDeadLetters(scheduler_pb2.ListDeadLettersRequest(user_id="u1")).items
    assert [(d.item_id, d.attempts, d.task_id) for d in dead] == [(poison.item_id, 3, "import-7")]
    assert "dependency is down" in dead[0].error

    (record_dir / "broken").unlink()
    redriven = client.stub.RedriveDeadLetters(
        scheduler_pb2.RedriveDeadLettersRequest(item_ids=[poison.item_id, "nope"])
    )
    assert list(redriven.item_ids) == [poison.item_id]
    assert client.wait_idle().idle
    assert client.status(poison.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    assert not client.stub.ListDeadLetters(scheduler_pb2.ListDeadLettersRequest()).items
    assert (record_dir / "u1.fragile").read_text().split() == [behind.item_id, poison.item_id]


def test_permanent_errors_are_not_retried(client: Client) -> None:
    bad_chat = item(content='[{"role": "user"}]')
    got = collect(client.session([bad_chat]))
    assert got["completions"][0].status == items_pb2.TASK_STATUS_FAILED
    assert "content[0]" in got["completions"][0].error
    assert client.status(bad_chat.item_id).items[0].attempts == 1


def test_full_backlog_refuses_unary_and_throttles_streams(make_server: Any, record_dir: Path) -> None:
    _, client = make_server(limits={"max_backlog": 4}, workers={"count": 1})
    slow = [item(label="slow", content="0.3") for _ in range(4)]
    client.stub.Submit(scheduler_pb2.SubmitRequest(items=slow))
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=[item(label="record")]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "backlog" in err.value.details()

    # A stream is not refused: the server stops reading it until there is room, so its items are
    # acknowledged only as earlier work completes. Nothing is dropped.
    requests: queue.Queue[scheduler_pb2.SessionRequest | None] = queue.Queue()
    more = [item(label="record", content=str(n)) for n in range(8)]
    for it in more:
        requests.put(scheduler_pb2.SessionRequest(items=[it]))
    requests.put(None)
    events: list[tuple[str, str]] = []
    for response in client.stub.Session(iter(requests.get, None), timeout=60):
        events += [("ack", a.item_id) for a in response.acks] + [("done", c.item_id) for c in response.completions]
    first_acks = [e for e in events if e[0] == "ack"]
    assert {i for _, i in first_acks} == {i.item_id for i in more}
    assert client.status(slow[0].item_id).status == items_pb2.TASK_STATUS_COMPLETED
    assert (record_dir / "u1.c1").read_text().split() == [i.item_id for i in slow + more]


def test_kill_9_mid_stream_keeps_every_acknowledged_item(server_process: Any) -> None:
    server = server_process(workers={"count": 2})
    client = server.start()
    items = [item(cube=f"c{n % 3}", label="tally", content=str(n)) for n in range(3000)]
    acked: set[str] = set()
    killed = threading.Event()

    def requests() -> Any:
        for n in range(0, len(items), 10):
            if killed.is_set():
                return
            yield scheduler_pb2.SessionRequest(items=items[n : n + 10])
            time.sleep(0.002)

    def consume() -> None:
        try:
            for response in client.stub.Session(requests(), timeout=60):
                acked.update(a.item_id for a in response.acks)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 30
    while len(acked) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    killed.set()
    reader.join(30)
    assert 500 <= len(acked) < len(items), "the kill landed mid-stream"

    client = server.start()
    # resend everything: acknowledged items are duplicates, the rest are new; nothing is applied twice
    for n in range(0, len(items), 500):
        acks = client.stub.Submit(scheduler_pb2.SubmitRequest(items=items[n : n + 500])).acks
        for a in acks:
            if a.item_id in acked:
                assert a.duplicate
    assert client.wait_idle(seconds=60).idle
    for cube in ("c0", "c1", "c2"):
        sent = [i.item_id for i in items if i.mem_cube_id == cube]
        assert client.tallies(cube=cube) == [(item_id, 1) for item_id in sent]
    assert server.terminate() == 0


def test_stale_reader_slot_of_a_killed_process_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "env"
    code = (
        "import sys, time, lmdb; env = lmdb.open(sys.argv[1], max_dbs=16, max_readers=512);"
        "txn = env.begin(); print('reading', flush=True); time.sleep(60)"
    )
    reader = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "reading"
    reader.send_signal(signal.SIGKILL)
    reader.wait(10)
    with_stale = Environment(path, 1 << 20, True, ("x",))
    try:
        assert with_stale.env.reader_check() == 0  # already cleared when the environment was opened
        assert "(no active readers)" in with_stale.env.readers() or str(reader.pid) not in with_stale.env.readers()
    finally:
        with_stale.close()


def test_full_map_grows_by_itself(make_server: Any) -> None:
    _, client = make_server(storage={"map_size_mb": 1, "shards": 1})
    batch = [item(content=" ".join(f"w{n}x{k}" for k in range(300))) for n in range(300)]  # ~2.5 MB, no duplicates
    for n in range(0, len(batch), 50):
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=batch[n : n + 50]))
    assert client.wait_idle(seconds=60).idle
    assert all(client.status(i.item_id).status == items_pb2.TASK_STATUS_COMPLETED for i in batch[::37])
    assert client.memory().sizes.long_term_memory_size == 300


@pytest.mark.parametrize("writemap", [False, True], ids=["pwrite", "writemap"])
def test_full_disk_is_a_clear_error_without_corruption(tmp_path: Path, writemap: bool) -> None:
    """With writemap a page fault on a hole of the sparse map would kill the process with SIGBUS on a full
    disk; the map is allocated up front so that it is a StorageError like without."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    try:
        code = """
import sys
from pathlib import Path
from memsched_grpc.store.environment import Environment
from memsched_grpc.errors import StorageError
env = Environment(Path(sys.argv[1]), 1 << 20, True, ("data",), writemap=sys.argv[2] == "1")
db = env.dbs["data"]
written = 0
try:
    for batch in range(1000):
        def put(txn, batch=batch):
            for n in range(50):
                txn.put(f"{batch:05d}-{n:03d}".encode(), b"x" * 2000, db=db)
        env.write(put)
        written += 1
except StorageError as e:
    print("STORAGE", e)
with env.read() as txn:
    keys = sum(1 for _ in txn.cursor(db=db))
print("BATCHES", written, "KEYS", keys)
"""
        out = subprocess.run(
            [sys.executable, "-c", code, str(mount / "env"), "1" if writemap else "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and "STORAGE" in out.stdout, f"exit {out.returncode}: {out.stdout}{out.stderr}"
        assert "disk" in out.stdout.lower() or "space" in out.stdout.lower() or "map" in out.stdout.lower()
        batches = int(out.stdout.split("BATCHES")[1].split()[0])
        keys = int(out.stdout.split("KEYS")[1].split()[0])
        assert batches > 0 and keys == batches * 50, "every committed batch is whole, nothing half-written"
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_oversized_request_is_refused_with_a_clear_status(make_server: Any) -> None:
    _, client = make_server(server={"max_receive_message_bytes": 64 * 1024})
    huge = [item(content="y" * 1000) for _ in range(100)]
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Submit(scheduler_pb2.SubmitRequest(items=huge))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.value.details() or "")
    assert client.stub.Submit(scheduler_pb2.SubmitRequest(items=huge[:10])).acks
