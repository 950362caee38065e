"""The bus encodes a message's properties itself: the bytes must be pamqp's, and read back the same."""

from __future__ import annotations

import datetime
import decimal
import time

import aiormq
import pytest
from agentrunner_rabbitmq.properties import Properties
from pamqp import frame, header

PAMQP = aiormq.spec.Basic.Properties
NOW = datetime.datetime.now(datetime.UTC)

CASES = {
    "a task": dict(content_type="application/json", delivery_mode=2, message_id="0" * 32, timestamp=NOW,
                   headers={"trace_id": "1" * 32, "task": True, "unrecorded": True, "reply_to": "2" * 32}),
    "a completion event": dict(content_type="application/json", delivery_mode=2, message_id="3" * 32, timestamp=NOW,
                               headers={"trace_id": "4" * 32, "origin_agent": "echo", "depth": 1,
                                        "agentrunner_execution": '{"result": "ünï ☃ 😀\\n\\u2028"}',
                                        "BCC": ["agentrunner.done.5"]}),
    "every kind of header": dict(headers={
        "none": None, "false": False, "true": True, "zero": 0, "byte": -128, "short": -32768, "ushort": 65535,
        "int": -2**31, "uint": 2**32 - 1, "long": 2**62, "float": 1.5, "decimal": decimal.Decimal("-12.25"),
        "time": NOW, "bytes": bytearray(b"\x00\xff"), "empty": "", "list": [1, "two", None, [3], {"four": 4}],
        "table": {"nested": {"deeper": [True]}}, "ключ": "значение", "x-agentrunner-deliveries": 3,
    }),
    "a transient notice": dict(content_type="application/json", delivery_mode=1, headers={"internal": True}),
    "no headers": dict(content_type="application/json", headers={}, timestamp=datetime.datetime(2020, 1, 2, 3, 4, 5)),
    "the properties the bus does not set": dict(correlation_id="c", reply_to="r", expiration="60000", priority=9,
                                                message_type="t", user_id="guest", app_id="a",
                                                content_encoding="gzip", timestamp=time.gmtime(86400)),
    "nothing": {},
}


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_properties_encode_as_pamqp_does_and_read_back(values):
    ours = Properties(**values)
    assert ours.marshal() == PAMQP(**values).marshal()
    encoded = frame.marshal(header.ContentHeader(body_size=7, properties=ours), 1)
    _, _, decoded = frame.unmarshal(encoded)
    assert decoded.body_size == 7
    for name, value in values.items():
        read = getattr(decoded.properties, name)
        if name == "timestamp":  # whole seconds, in UTC
            expected = value if isinstance(value, datetime.datetime) else datetime.datetime(*value[:6])
            assert read == expected.replace(microsecond=0, tzinfo=datetime.UTC)
        elif name != "headers":
            assert read == value
    headers = values.get("headers")
    if headers:
        simple = {key: value for key, value in headers.items() if isinstance(value, (str, bool, int, type(None)))}
        assert {key: decoded.properties.headers[key] for key in simple} == simple

def test_what_pamqp_refuses_is_refused_the_same_way():
    for values in ({"headers": {"k": object()}}, {"message_id": "m" * 256}, {"headers": {"big": 2**64}}):
        with pytest.raises(TypeError):
            PAMQP(**values).marshal()
        with pytest.raises(TypeError):
            Properties(**values).marshal()
