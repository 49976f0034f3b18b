"""A cube's log history: one entry per message (a query's ~20 log items are one value, see CubeTables.append_logs),
trimmed to the last ``storage.history_per_cube`` items a whole entry at a time, and replayed item by item."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memsched.v1 import items_pb2, scheduler_pb2
from memsched_grpc.encoded_log import EncodedLog
from memsched_grpc.store import keys
from memsched_grpc.store.cubes import CubeTables
from memsched_grpc.store.environment import as_bytes
from tests.conftest import Client, completed_logs, item

KEEP = 6
SHARDS = 4  # settings_dict's


def _facts(first: int, count: int) -> items_pb2.ScheduleMessageItem:
    """One add message of ``count`` distinct facts: a log item each, all in one history entry."""
    turns = [
        {"role": "assistant", "content": f"Fact {n}: the alpha{n} and beta{n} tools."}
        for n in range(first, first + count)
    ]
    return item(content=json.dumps(turns))


def _replay(client: Client, last: int) -> list[bytes]:
    stream = client.stub.WatchLogs(
        scheduler_pb2.WatchLogsRequest(user_id="u1", mem_cube_id="c1", replay=last), timeout=30
    )
    first = next(stream)
    stream.cancel()
    return [log.SerializeToString() for log in first.logs]


def _kept(messages: list[list[bytes]]) -> list[bytes]:
    """What the history must hold: the newest messages' items, dropping a message once all of its items are
    older than the last KEEP."""
    total = sum(len(m) for m in messages)
    kept, seen = [], 0
    for m in messages:
        seen += len(m)
        if seen > total - KEEP:
            kept.extend(m)
    return kept


def test_history_keeps_whole_messages_and_replays_the_last_items(make_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server, client = make_server(data_dir, storage={"history_per_cube": KEEP})
    messages: list[list[bytes]] = []
    for batch in ([_facts(0, 10)], [_facts(10, 1)], [_facts(11, 4)]):
        messages.append([log.SerializeToString() for log in completed_logs(client, batch)])
    assert [len(m) for m in messages] == [10, 1, 4]
    # the 10 items of the first message are not all older than the last 6 items: all 15 are kept
    assert _replay(client, 100) == _kept(messages) == [log for m in messages for log in m]
    assert _replay(client, 3) == messages[2][-3:] and _replay(client, 5) == messages[1] + messages[2]
    sequences = [items_pb2.ScheduleLogForWebItem.FromString(log).sequence for log in _replay(client, 100)]
    assert sequences == list(range(sequences[0], sequences[0] + 15))

    server.stop()  # after a restart the cube loads (reading its history's pages) and trims on
    server, client = make_server(data_dir, storage={"history_per_cube": KEEP})
    messages.append([log.SerializeToString() for log in completed_logs(client, [_facts(15, 1)])])
    assert _replay(client, 100) == _kept(messages) == messages[1] + messages[2] + messages[3]
    messages.append([log.SerializeToString() for log in completed_logs(client, [_facts(16, 3)])])
    assert _replay(client, 100) == _kept(messages) == messages[2] + messages[3] + messages[4]
    assert _replay(client, 4) == messages[3] + messages[4]
    server.stop()

    tables = CubeTables.open(data_dir, keys.shard_of("u1", "c1", SHARDS), 16 << 20, True)
    try:
        with tables.env.read() as txn:
            prefix = keys.history_prefix(keys.cube_key("u1", "c1"))
            entries = [key for key, _ in txn.cursor(db=tables._history) if as_bytes(key).startswith(prefix)]
        assert len(entries) == 3  # one per kept message, not one per item
    finally:
        tables.env.close()


def _log(seq: int) -> EncodedLog:
    data = items_pb2.ScheduleLogForWebItem(
        item_id=f"m/{seq}", user_id="u", mem_cube_id="c", sequence=seq
    ).SerializeToString()
    return EncodedLog("u", "c", "addMessage", seq, data)


def test_entries_of_one_item_written_before_batches_read_and_trim_beside_them(tmp_path: Path) -> None:
    tables = CubeTables.open(tmp_path, 0, 16 << 20, True)
    cube = keys.cube_key("u", "c")

    def sequences(last: int) -> list[int]:
        with tables.env.read() as txn:
            return [log.sequence for log in tables.history(txn, cube, last)]

    try:
        # as every version before batches wrote them: one entry per item, its bytes the value
        tables.env.write(
            lambda txn: [txn.put(keys.history_key(cube, s), _log(s).data, db=tables._history) for s in range(1, 9)]
        )
        tables.env.write(lambda txn: tables.append_logs(txn, cube, [_log(s) for s in range(9, 13)], keep=5))
        assert sequences(100) == [8, 9, 10, 11, 12]  # the single entries 1-7 went, one at a time
        assert sequences(3) == [10, 11, 12] and sequences(0) == []
        tables.env.write(lambda txn: tables.append_logs(txn, cube, [_log(s) for s in range(13, 16)], keep=5))
        assert sequences(100) == list(range(9, 16))  # 9-12 stay whole: 11 and 12 are among the last five
        assert sequences(5) == [11, 12, 13, 14, 15]
        tables.env.write(lambda txn: tables.append_logs(txn, cube, [_log(16)], keep=5))
        assert sequences(100) == list(range(9, 17))  # 12 is still among the last five
        tables.env.write(lambda txn: tables.append_logs(txn, cube, [_log(17)], keep=5))
        assert sequences(100) == [13, 14, 15, 16, 17]
    finally:
        tables.env.close()
