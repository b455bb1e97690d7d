"""What a connection writes in one event-loop step leaves together, in order, and never later
than the step's end (a streamed response's head does not wait for its body)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.server.step_writes import HOLD_AT_MOST_BYTES, StepWriter


class _Recording(asyncio.Transport):
    """A transport that keeps each call it is given (the socket's side of the boundary)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", [bytes(d) for d in list_of_data]))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


async def test_a_head_and_body_written_in_one_step_leave_in_one_call() -> None:
    transport = _Recording()
    writer = StepWriter(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    writer.write(b"{}")
    assert transport.calls == []  # held for the rest of the step
    await asyncio.sleep(0)
    assert transport.calls == [
        ("writelines", [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"])
    ]


async def test_nothing_is_held_past_the_step_so_a_streamed_head_leaves_before_its_body() -> None:
    transport = _Recording()
    writer = StepWriter(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)
    assert transport.calls == [("write", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")]
    writer.write(b"5\r\nhello\r\n")
    await asyncio.sleep(0)
    assert transport.calls[-1] == ("write", b"5\r\nhello\r\n")


async def test_close_sends_what_is_held_first_and_later_writes_go_nowhere() -> None:
    transport = _Recording()
    writer = StepWriter(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    writer.close()
    assert transport.calls == [("write", b"HTTP/1.1 400 Bad Request\r\n\r\n"), ("close", None)]
    writer.write(b"late")
    await asyncio.sleep(0)  # the flush finds the transport closing and sends nothing
    assert transport.calls[-1] == ("close", None)
    assert writer.is_closing()


async def test_empty_writes_are_dropped_and_the_rest_of_the_transport_is_reached() -> None:
    transport = _Recording()
    writer = StepWriter(transport, asyncio.get_running_loop())
    writer.write(b"")
    writer.writelines([b"a", b"", b"b"])
    await asyncio.sleep(0)
    assert transport.calls == [("writelines", [b"a", b"b"])]
    assert writer.get_extra_info("peername") == ("127.0.0.1", 1234)


async def test_a_large_body_goes_to_the_transport_at_once_for_its_flow_control() -> None:
    transport = _Recording()
    writer = StepWriter(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n")
    writer.write(b"x" * (HOLD_AT_MOST_BYTES + 1))
    assert [call for call, _ in transport.calls] == ["writelines"]  # not held to the step's end
    writer.write(b"tail")
    await asyncio.sleep(0)
    assert transport.calls[-1] == ("write", b"tail")
    assert len(transport.calls) == 2
