"""Every override of pika's internals, and nothing else: the adapter's write path and the content
header's encoding. pika documents neither as public, so pyproject.toml pins pika to the minor
release their guard tests have run against (raise the pin only once they pass on a new one).
"""

from __future__ import annotations

import asyncio

import pika
from pika.adapters.asyncio_connection import AsyncioConnection


# Guard test (in tests/unit/test_replayjob_messages.py):
# test_frames_of_one_loop_turn_leave_in_one_write
class CoalescingConnection(AsyncioConnection):  # type: ignore[misc]
    """Joins the frames written during one turn of the event loop into one socket write.

    pika writes every frame (three per message) with a system call of its own, which costs more than
    everything else of a publish; the frames are held only until the publishing code next yields.
    pika has no public option for this. `_adapter_emit_data` is the hook pika's Connection declares
    abstract for its adapters to implement ("Subclasses must override this"), so an adapter subclass
    may override it. The guard test checks it is still the path of every frame.
    """

    _held: list[bytes] | None = None

    def _adapter_emit_data(self, data: bytes) -> None:
        if self._held is None:
            self._held = []
            asyncio.get_running_loop().call_soon(self._release)
        self._held.append(data)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held:
            super()._adapter_emit_data(b"".join(held))


# Guard test (in tests/unit/test_replayjob_messages.py):
# test_a_message_carries_the_events_properties_and_headers_with_the_replays_marks
class Encoded(pika.BasicProperties):  # type: ignore[misc]
    """Properties already in wire format; pika's content header frame takes them from `encode()`.

    Only for sending: the attributes of BasicProperties are not set.
    """

    def __init__(self, encoded: bytes) -> None:  # no super().__init__(): nothing reads the fields
        self.encoded = encoded

    def encode(self) -> list[bytes]:
        return [self.encoded]
