"""Answering a stream in order while working ahead: what both streaming methods share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

Message = TypeVar("Message")
Answer = TypeVar("Answer")


async def answer_in_order(
    messages: AsyncIterable[Message], answer: Callable[[Message], Awaitable[Answer]], window: int
) -> AsyncIterator[Answer]:
    """Each message's answer in the order sent, as soon as it is ready, with at most ``window``
    messages in work.

    Reading and answering run concurrently, so a caller that waits for each answer before
    sending the next message (ping-pong) is served, and one that sends ahead is held back by
    the bounded window (and gRPC flow control) rather than buffered without limit. A stream
    that ends early (the caller went away) cancels what was in work.
    """
    pending: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(maxsize=window)

    async def read() -> None:
        try:
            async for message in messages:
                await pending.put(asyncio.ensure_future(answer(message)))
        finally:
            await pending.put(None)

    reader = asyncio.ensure_future(read())
    try:
        while (task := await pending.get()) is not None:
            yield await task
        await reader  # surfaces a failure while reading the request stream
    finally:
        reader.cancel()
        while not pending.empty():
            task = pending.get_nowait()
            if task is not None:
                task.cancel()
