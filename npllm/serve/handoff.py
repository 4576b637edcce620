"""Handing the engine's events to the event loop: one `Inbox` a request.

The engine thread hands a step's events over in one batch per event loop, right before
the step's kernels, which run without the GIL (npllm/serve/engine.py); `deliver` runs on
the loop and puts each event into its request's inbox, and the request's handler takes
all that came since it last looked in one go: when the loop falls behind the engine, a
stream's tokens go out together, in one chunk (npllm/serve/answer.py).
"""

from __future__ import annotations

import asyncio

from npllm.serve.sequence import Event


class Inbox:
    """The events of one request, handed over by the engine (`deliver`, on the event
    loop) and taken by its handler: all that came since it last took them, in one go."""

    __slots__ = ("events", "waiter")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.waiter: asyncio.Future | None = None

    def put(self, event: Event) -> None:
        self.events.append(event)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def take(self) -> list[Event]:
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        events, self.events = self.events, []
        return events


def deliver(batch: list[tuple[Inbox, Event]]) -> None:
    """On the event loop: each event into its request's inbox."""
    for inbox, event in batch:
        inbox.put(event)
