"""Stop a request's database work when its client goes away (ASGI middleware).

Without this, a search whose client disconnected kept PostgreSQL busy until the statement ended
(minutes, for a pathological filter, before filters were capped). Each request runs inside a
``Database.cancel_scope()``; once the app has read the request body, a watcher waits for the
client's disconnect and, if the response is not complete by then, cancels the statement running on
the request's connection (and any the request would start). The request then ends quietly: there
is nobody to answer.

Requests without a body are not watched (the watcher would have to read the request's one empty
message before the app does); they are GETs of bounded lists, and ``statement_timeout`` still caps
them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import psycopg
from anyio import to_thread

from ragtune.store.database import Database

log = logging.getLogger("ragtune.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class CancelOnDisconnect:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body_read = anyio.Event()
        response_done = False

        async def receiving() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def sending(message: Message) -> None:
            nonlocal response_done
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_done = True
            await send(message)

        with Database.cancel_scope() as cancel:
            async def watch() -> None:
                await body_read.wait()
                message = await receive()  # blocks until the client leaves or the response completes
                if message["type"] == "http.disconnect" and not response_done:
                    await to_thread.run_sync(cancel.cancel)

            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(watch)
                    try:
                        await self.app(scope, receiving, sending)
                    finally:
                        tasks.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # the app's error, wrapped by the task group
                if cancel.cancelled and group.subgroup(psycopg.errors.QueryCanceled) is not None:
                    log.info("%s %s: the client went away; its query was canceled", scope["method"], scope["path"])
                    return
                raise group.exceptions[0] if len(group.exceptions) == 1 else group from None


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or []:
        if name == b"transfer-encoding" or (name == b"content-length" and value not in (b"0", b"")):
            return True
    return False
