"""The fake's event-stream frames are real ones: botocore's own decoder reads them back."""

from __future__ import annotations

import json

import pytest
from bedrock_fake_server import Answer, ToolUse, encode_frame, event_frame, exception_frame
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer


def decode(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_botocore_decodes_an_event_frame():
    [message] = decode(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}))
    assert message.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                               ":message-type": "event"}
    assert json.loads(message.payload) == {"contentBlockIndex": 0, "delta": {"text": "Hi"}}
    assert message.to_response_dict()["status_code"] == 200


def test_botocore_decodes_an_exception_frame_as_an_error():
    [message] = decode(exception_frame("throttlingException", "slow down"))
    assert message.headers[":exception-type"] == "throttlingException"
    assert message.to_response_dict()["status_code"] == 400
    assert json.loads(message.payload) == {"message": "slow down"}


def test_a_whole_answer_decodes_frame_by_frame_even_when_split_anywhere():
    data = b"".join(Answer(text=("Hel", "lo"), tool_uses=[ToolUse("t1", "calc", {"a": 1})]).frames())
    buffer = EventStreamBuffer()
    events = []
    for start in range(0, len(data), 7):  # arbitrary chunk boundaries, as the network delivers them
        buffer.add_data(data[start:start + 7])
        events.extend(message.headers[":event-type"] for message in buffer)
    assert events == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop",
                      "contentBlockStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop",
                      "messageStop", "metadata"]


def test_a_corrupted_frame_fails_its_checksum():
    frame = bytearray(encode_frame({":event-type": "messageStart"}, b'{"role": "assistant"}'))
    frame[-6] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        decode(bytes(frame))
