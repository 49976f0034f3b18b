"""Soak: sustained mixed load for a bounded time, with periodic worker kills (SIGKILL) and one server
crash-and-restart, then an audit: every acknowledged item must have been applied exactly once.

    python -m bench.soak --seconds 60

Prints items sent, acknowledged, processed, lost (must be 0) and processed twice (must be 0); exits 1
when either is not 0. The client behaves as a MemOS client should: items whose ack it never saw are
resent with the same item_id after the restart (the server answers duplicates for those it had stored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.common import Corpus, Memsched, MemschedConfig, header, item
from memsched.v1 import items_pb2, scheduler_pb2, scheduler_pb2_grpc

USER = "soak"


def _workers(server: Memsched) -> list[int]:
    out = []
    for pid in server.pids[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(pid)
    return out


class Load:
    """Streams batches of items until told to stop; remembers what was sent and what was acknowledged."""

    def __init__(self, cubes: int, batch: int, seed: int) -> None:
        self.cubes = cubes
        self.batch = batch
        self.rng = random.Random(seed)
        self.corpus = Corpus(seed)
        self.sent: dict[str, items_pb2.ScheduleMessageItem] = {}
        self.acked: set[str] = set()
        self.mixed = 0
        self.stop = threading.Event()

    def _next_batch(self) -> list[items_pb2.ScheduleMessageItem]:
        out = []
        for _ in range(self.batch):
            cube = f"cube{self.rng.randrange(self.cubes)}"
            if self.rng.random() < 0.1:  # real scheduling work alongside the audited items
                label = self.rng.choice(["query", "answer"])
                out.append(item(USER, cube, label, self.corpus.sentence(6)))
                self.mixed += 1
                continue
            it = item(USER, cube, "soak", self.corpus.sentence())
            self.sent[it.item_id] = it
            out.append(it)
        return out

    def run(self, address: str, rate: float) -> None:
        """One stream at about ``rate`` batches a second; returns when the stream breaks or stop is set."""
        channel = grpc.insecure_channel(address)
        stub = scheduler_pb2_grpc.SchedulerStub(channel)

        def requests():  # type: ignore[no-untyped-def]
            while not self.stop.is_set():
                yield scheduler_pb2.SessionRequest(items=self._next_batch())
                time.sleep(1.0 / rate)

        try:
            for response in stub.Session(requests()):
                self.acked.update(a.item_id for a in response.acks)
        except grpc.RpcError:
            pass
        finally:
            channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (bounded, default 60)")
    parser.add_argument("--cubes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=20, help="items per stream message")
    parser.add_argument("--rate", type=float, default=50.0, help="stream messages per second")
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between worker kills")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    header("soak: mixed load, worker kills, one server crash and restart")

    data_dir = Path(tempfile.mkdtemp(prefix="memsched-soak-"))
    cfg = MemschedConfig(
        workers=2,
        long_term_capacity=1_000_000,
        extra={"handlers": {"soak": "bench.soak_handlers:apply_once"}, "workers": {"max_attempts": 10}},
    )
    load = Load(args.cubes, args.batch, args.seed)
    rng = random.Random(args.seed)
    worker_kills = 0
    server = Memsched(cfg, data_dir)
    deadline = time.monotonic() + args.seconds
    restart_at = time.monotonic() + args.seconds / 2
    restarted = False
    while time.monotonic() < deadline:
        load.stop.clear()
        streamer = threading.Thread(target=load.run, args=(server.address, args.rate), daemon=True)
        streamer.start()
        next_kill = time.monotonic() + args.kill_every
        while time.monotonic() < (deadline if restarted else restart_at):
            time.sleep(0.05)
            if time.monotonic() >= next_kill:
                victims = _workers(server)
                if victims:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    worker_kills += 1
                next_kill += args.kill_every
        if restarted:
            break
        for pid in reversed(server.pids):  # crash the whole server mid-stream
            os.kill(pid, signal.SIGKILL)
        server.proc.wait(10)
        load.stop.set()
        streamer.join(10)
        print(f"# server killed after {len(load.acked)} acks; restarting on the same data dir", flush=True)
        server = Memsched(cfg, data_dir)
        restarted = True
    load.stop.set()
    streamer.join(30)

    channel = grpc.insecure_channel(server.address)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    unacked = [it for item_id, it in load.sent.items() if item_id not in load.acked]
    resent_duplicates = 0
    for i in range(0, len(unacked), 500):
        acks = stub.Submit(scheduler_pb2.SubmitRequest(items=unacked[i : i + 500]), timeout=120).acks
        resent_duplicates += sum(a.duplicate for a in acks)
        load.acked.update(a.item_id for a in acks)
    wait = scheduler_pb2.WaitIdleRequest(user_id=USER)
    wait.timeout.FromSeconds(600)
    idle = stub.WaitIdle(wait, timeout=620).idle

    applied: dict[str, int] = {}
    for n in range(args.cubes):
        memory = stub.GetMemory(
            scheduler_pb2.GetMemoryRequest(
                user_id=USER, mem_cube_id=f"cube{n}", memory_types=[items_pb2.MEMORY_TYPE_LONG_TERM_MEMORY]
            ),
            timeout=120,
        )
        for m in memory.partitions[0].items:
            applied[m.id] = int(m.metadata["applied"])
    failed = len(stub.ListDeadLetters(scheduler_pb2.ListDeadLettersRequest(user_id=USER, limit=100_000)).items)
    channel.close()
    server.stop()

    audited = [i for i in load.acked if i in load.sent]
    figures = {
        "seconds": args.seconds,
        "sent": len(load.sent) + load.mixed,
        "audited_sent": len(load.sent),
        "acknowledged": len(audited),
        "resent_after_restart": len(unacked),
        "resent_that_were_duplicates": resent_duplicates,
        "processed": sum(1 for i in audited if applied.get(i, 0) >= 1),
        "lost": sum(1 for i in audited if applied.get(i, 0) == 0),
        "processed_twice": sum(1 for i in audited if applied.get(i, 0) > 1),
        "failed": failed,
        "worker_kills": worker_kills,
        "server_restarts": 1,
        "idle_at_end": idle,
    }
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["lost"] == 0 and figures["processed_twice"] == 0 and idle
    print("# OK" if ok else "# FAILED: items lost or applied twice")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
