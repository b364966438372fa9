"""Property-based fuzzing of the parser (hypothesis): whatever arrives, the
decoder and the typed messages raise ProtocolError or return a value, never
anything else (no traceback, no RecursionError, no OverflowError)."""
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from pgha.errors import ProtocolError
from pgha.messages import Instruction, Report
from pgha.protocol import MAX_FRAME, decode, encode, validate_request

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) \
    | st.floats(allow_nan=False) | st.text(max_size=30)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)

REPORT_FIELDS = ["pg", "role", "lsn", "receive_lsn", "timeline", "sync_standby", "receiver", "syncrep_wait",
                 "replication", "address", "relinquished", "grant_remaining", "lease_remaining", "error",
                 "last_action"]
INSTRUCTION_FIELDS = ["type", "epoch", "role", "reason", "primary", "primary_address", "standby",
                      "standby_address", "sync_standby", "relinquish", "lease_time", "heartbeat_interval"]
ADDRESS = st.fixed_dictionaries({}, optional={"host": JSON | st.text(max_size=5), "pg_port": JSON | st.integers(),
                                              "peer_port": JSON | st.integers(), "slot": JSON | st.text(max_size=5)})
ROW = st.fixed_dictionaries({}, optional={"name": JSON, "state": st.sampled_from(["streaming", None]) | JSON,
                                          "sync_state": JSON, "flush_lsn": JSON, "reply_age": JSON})


def field_values(names):
    """Objects with our field names, each holding anything (or a plausible value)."""
    plausible = {"replication": st.lists(ROW | JSON, max_size=10), "address": ADDRESS | JSON,
                 "primary_address": ADDRESS | JSON, "standby_address": ADDRESS | JSON,
                 "type": st.just("instruction") | JSON,
                 "role": st.sampled_from(["primary", "standby", "wait"]) | JSON,
                 "lease_remaining": st.dictionaries(st.text(max_size=300), JSON | st.floats(), max_size=10) | JSON}
    return st.fixed_dictionaries({}, optional={n: plausible.get(n, JSON) for n in names})


def only_protocol_errors(parse, value):
    try:
        parse(value)
    except ProtocolError:
        pass


@FAST
@given(st.binary(max_size=2000))
def test_decode_on_arbitrary_bytes(data):
    only_protocol_errors(decode, data)


@FAST
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b":", b",", b"1", b"a", b" ", b'"v"',
                                 b'"type"', b"NaN", b"Infinity", b"-", b"e999"]), max_size=300))
def test_decode_on_json_like_token_soup(tokens):
    only_protocol_errors(decode, b"".join(tokens))


@FAST
@given(st.integers(min_value=0, max_value=50_000))
def test_decode_on_any_nesting_depth(depth):
    only_protocol_errors(decode, b'{"v":1,"type":"status","x":' + b"[" * depth + b"]" * depth + b"}")


@FAST
@given(JSON)
def test_decode_on_any_json_value(value):
    only_protocol_errors(decode, json.dumps(value).encode())


@FAST
@given(st.sampled_from(["heartbeat", "status", "switchover", "lease", "other"]), JSON,
       field_values(["node", "epoch", "to"]), field_values(REPORT_FIELDS) | JSON)
def test_validate_request_on_any_request(kind, extra, fields, report):
    message = {"v": 1, "type": kind, "extra": extra, **fields, "report": report}
    only_protocol_errors(lambda m: validate_request(decode(json.dumps(m).encode())), message)


@FAST
@given(field_values(REPORT_FIELDS) | JSON)
def test_report_from_wire_on_anything(wire):
    try:
        report = Report.from_wire(wire)
    except ProtocolError:
        return
    # What parses, serialises into a frame and parses back to the same value.
    assert len(encode({"type": "status", "report": report.to_wire()})) <= MAX_FRAME
    again = Report.from_wire(json.loads(json.dumps(report.to_wire())))
    assert again.to_wire() == report.to_wire()


@FAST
@given(field_values(INSTRUCTION_FIELDS) | JSON)
def test_instruction_from_wire_on_anything(wire):
    only_protocol_errors(Instruction.from_wire, wire)
