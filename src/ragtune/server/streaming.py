"""Run a blocking generation on a thread and receive its tokens on the event loop.

``stream_tokens(work)`` starts ``work(on_token)`` on a thread and yields ``("token", text)`` items
as they come, then one ``("done", result)`` or ``("error", exception)``. When the consumer stops
early (the client went away), the next ``on_token`` call raises inside the thread, which ends
the generation instead of letting it run on for nobody.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any


class ClientGone(Exception):
    """Raised inside ``on_token`` once nobody listens any more."""


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False, default=str)}\n\n"


async def stream_tokens(work: Callable[[Callable[[str], None]], Any]) -> AsyncIterator[tuple[str, Any]]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    gone = threading.Event()

    def emit(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is gone
            gone.set()

    def on_token(piece: str) -> None:
        if gone.is_set():
            raise ClientGone
        if piece:
            emit("token", piece)

    def run() -> None:
        try:
            result = work(on_token)
        except ClientGone:
            return
        except BaseException as exc:
            if not gone.is_set():
                emit("error", exc)
            return
        if not gone.is_set():
            emit("done", result)

    threading.Thread(target=run, name="ragtune-stream", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            yield kind, value
            if kind != "token":
                return
    finally:
        gone.set()
