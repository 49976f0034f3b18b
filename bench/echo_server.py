"""The raw ceiling for ingest: a minimal grpcio servicer of the same Session method, the same server options
and thread pool as memsched, that answers each request with an ack per item and stores nothing.

Whatever memsched achieves is compared with this: the difference is what memsched itself costs."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from memsched.v1 import scheduler_pb2, scheduler_pb2_grpc


class EchoServicer(scheduler_pb2_grpc.SchedulerServicer):
    def Session(
        self, request_iterator: Iterator[scheduler_pb2.SessionRequest], context: grpc.ServicerContext
    ) -> Iterator[scheduler_pb2.SessionResponse]:
        for request in request_iterator:
            response = scheduler_pb2.SessionResponse()
            for it in request.items:
                response.acks.add(item_id=it.item_id)
            yield response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    limit = 64 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.threads),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        maximum_concurrent_rpcs=256,
    )
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    args.port_file.write_text(str(port))
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
