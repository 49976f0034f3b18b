"""``answer``: the assistant replied. Logs ``addMessage`` and raises the usage count of the working memories
the answer draws on (it shares at least a third of the memory's content words, and two or more of them)."""

from __future__ import annotations

from memsched_grpc.handlers.base import HandlerContext
from memsched_grpc.models import MemoryType, WebLogLabel
from memsched_grpc.retrieval.tokenizer import tokenize

MIN_SHARE = 1 / 3
MIN_SHARED = 2


def handle(ctx: HandlerContext) -> None:
    cube, message = ctx.cube, ctx.message
    cube.state.answers += 1
    answer_tokens = set(tokenize(message.content))
    for entry in cube.state.working:
        tokens = set(cube.tokens(entry.id))
        shared = len(tokens & answer_tokens)
        if tokens and shared >= min(MIN_SHARED, len(tokens)) and shared >= MIN_SHARE * len(tokens):
            cube.record_use(entry.id)
    ctx.log(WebLogLabel.ADD_MESSAGE, MemoryType.USER_INPUT, MemoryType.NOT_APPLICABLE, f"[Assistant] {message.content}")
    cube.save()
