"""Bad items are refused in-band with the field and the rule; the stream and accepted work survive."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from memsched.v1 import items_pb2
from tests.conftest import Client, collect, item


def test_rejections_mid_stream_do_not_end_it(make_server: object) -> None:
    _, client = make_server(limits={"max_content_bytes": 64})  # type: ignore[operator]
    good1, good2, good3 = item(content="one"), item(content="two"), item(content="three")
    far_past = Timestamp(seconds=-62135596800 - 1)
    too_old = Timestamp(seconds=0)
    bad = {
        "user_id": item(user=""),
        "mem_cube_id": item(cube=""),
        "label": item(label=""),
        "content": item(content="x" * 65),
        "timestamp": item(timestamp=far_past),
        "task_id": item(task_id="bad\x00id"),
    }
    unknown = item(label="summarise")
    old = item(timestamp=too_old)
    got = collect(client.session([good1, *bad.values()], [unknown, good2], [old, good3]))
    by_id = {r.item_id: r for r in got["rejections"]}
    for field, it in bad.items():
        rejection = by_id[it.item_id]
        assert rejection.field == field, rejection
        assert rejection.code == 3  # INVALID_ARGUMENT
        assert rejection.reason
    assert "registered labels: " in by_id[unknown.item_id].reason and "query" in by_id[unknown.item_id].reason
    assert by_id[unknown.item_id].index == 0
    assert "within 3650 days" in by_id[old.item_id].reason
    assert by_id[bad["content"].item_id].reason == "must be at most 64 bytes of UTF-8"
    assert {a.item_id for a in got["acks"]} == {good1.item_id, good2.item_id, good3.item_id}
    assert all(c.status == items_pb2.TASK_STATUS_COMPLETED for c in got["completions"])
    assert client.memory().sizes.long_term_memory_size == 3


def test_missing_item_id_is_refused(client: Client) -> None:
    got = collect(client.session([item(item_id="")]))
    assert [(r.field, r.index) for r in got["rejections"]] == [("item_id", 0)]
    assert not got["acks"]


def test_duplicate_item_id_is_acknowledged_and_processed_once(client: Client, record_dir: Path) -> None:
    first = item(label="record", content="once")
    got = collect(client.session([first, first], [first]))
    assert [a.duplicate for a in got["acks"]] == [False, True, True]
    assert len(got["completions"]) == 1
    client.wait_idle()
    again = collect(client.session([first]))
    assert again["acks"][0].duplicate and not again["completions"]
    assert client.status(first.item_id).status == items_pb2.TASK_STATUS_COMPLETED
    assert (record_dir / "u1.c1").read_text().split() == [first.item_id]


def test_info_with_a_number_json_cannot_hold_is_refused(client: Client) -> None:
    """Handlers get ``info`` as JSON-like data; NaN and Infinity have no JSON form, anywhere in the struct."""
    bad = []
    for value in (float("inf"), float("-inf"), float("nan")):
        for shape in ({"x": value}, {"nested": {"deep": [1, {"x": value}]}}):
            it = item(content="with info")
            it.info.update(shape)
            bad.append(it)
    good = item(content="with fine info")
    good.info.update({"speaker": "user", "score": 0.5, "tags": [1, 2.5, None, True]})
    got = collect(client.session([*bad, good]))
    assert sorted((r.item_id, r.field) for r in got["rejections"]) == sorted((it.item_id, "info") for it in bad)
    assert all("finite" in r.reason for r in got["rejections"])
    assert [a.item_id for a in got["acks"]] == [good.item_id]
    assert [c.status for c in got["completions"]] == [items_pb2.TASK_STATUS_COMPLETED]
