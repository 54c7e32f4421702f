"""Unit tests of the pure parts: envelope decoding, outcome and record encoding, the
stalled rule, the CLI's argument parsing, and the shipped Lua scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dagflow_worker import protocol
from dagflow_worker.__main__ import load_handlers, parse_queues
from dagflow_worker.protocol import EnvelopeError, Keys, parse_envelope
from dagflow_worker.worker import Worker

REPO = Path(__file__).resolve().parents[3]
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "dagflow_worker" / "lua"
NORMATIVE = REPO / "actors" / "src" / "queue" / "lua"


def test_shipped_lua_scripts_are_the_engines() -> None:
    """The package's copies must equal actors/src/queue/lua byte for byte; run
    `python workers/python/scripts/sync_lua.py` after changing those."""
    normative = {p.name: p.read_bytes() for p in NORMATIVE.glob("*.lua")}
    shipped = {p.name: p.read_bytes() for p in SHIPPED.glob("*.lua")}
    assert normative, f"no Lua scripts found in {NORMATIVE}"
    assert sorted(shipped) == sorted(normative), "run workers/python/scripts/sync_lua.py"
    for name, text in normative.items():
        assert shipped[name] == text, f"{name} differs from {NORMATIVE / name}: run scripts/sync_lua.py"


ENV = {
    "v": 1, "id": "f1:resize:2", "flowId": "f1", "node": "resize", "attempt": 2, "handler": "resize",
    "queue": "py", "input": {"data": {"w": 800}, "parents": {"dl": {"path": "/a"}}},
    "timeoutMs": 500, "maxStalled": 1, "enqueuedAtMs": 1718000000000, "futureField": [1],
}


def test_envelope_decodes_every_field_and_ignores_unknown_ones() -> None:
    env = parse_envelope(json.dumps(ENV).encode())
    assert (env.id, env.flow_id, env.node, env.attempt, env.handler, env.queue) == (
        "f1:resize:2", "f1", "resize", 2, "resize", "py")
    assert env.data == {"w": 800}
    assert env.parents == {"dl": {"path": "/a"}}
    assert (env.timeout_ms, env.max_stalled, env.enqueued_at_ms) == (500, 1, 1718000000000)
    assert env.field == "resize:2"
    assert env.priority == 5, "an envelope without a priority (written before priorities) is read as 5"


@pytest.mark.parametrize("priority", [0, 3, 9])
def test_envelope_priority(priority: int) -> None:
    assert parse_envelope(json.dumps(dict(ENV, priority=priority))).priority == priority


def test_envelope_without_data_or_timeout() -> None:
    raw = dict(ENV, input={"data": None, "parents": {}})
    del raw["timeoutMs"]
    env = parse_envelope(json.dumps(raw))
    assert env.data is None and env.parents == {} and env.timeout_ms is None


@pytest.mark.parametrize("raw, reason", [
    (None, "no envelope"),
    (b"{not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (json.dumps(dict(ENV, v=2)).encode(), "unsupported envelope version 2"),
    (json.dumps({k: v for k, v in ENV.items() if k != "v"}).encode(), "unsupported envelope version None"),
    (json.dumps(dict(ENV, attempt="2")).encode(), "'attempt'"),
    (json.dumps(dict(ENV, attempt=True)).encode(), "'attempt'"),
    (json.dumps(dict(ENV, attempt=0)).encode(), "'attempt'"),
    (json.dumps(dict(ENV, node=None)).encode(), "'node'"),
    (json.dumps(dict(ENV, input=[])).encode(), "'input'"),
    (json.dumps({k: v for k, v in ENV.items() if k != "maxStalled"}).encode(), "'maxStalled'"),
    (json.dumps(dict(ENV, timeoutMs=-1)).encode(), "timeoutMs"),
    (json.dumps(dict(ENV, priority=10)).encode(), "'priority'"),
    (json.dumps(dict(ENV, priority=-1)).encode(), "'priority'"),
    (json.dumps(dict(ENV, priority="5")).encode(), "'priority'"),
    (json.dumps(dict(ENV, priority=True)).encode(), "'priority'"),
    (json.dumps(dict(ENV, priority=None)).encode(), "'priority'"),
])
def test_envelope_refusals_say_why(raw: bytes | None, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        parse_envelope(raw)


def test_map_element_input_gives_item_and_index() -> None:
    raw = dict(ENV, node="resize[1]", input={"data": {"w": 800}, "parents": {"dl": [5, 6]},
                                            "item": {"x": 6}, "index": 1})
    env = parse_envelope(json.dumps(raw))
    assert (env.item, env.index) == ({"x": 6}, 1)
    assert env.data == {"w": 800} and env.parents == {"dl": [5, 6]}
    # A null element is an element: index set, item None.
    env = parse_envelope(json.dumps(dict(ENV, input={"data": None, "parents": {}, "item": None, "index": 0})))
    assert env.item is None and env.index == 0
    # A plain job has neither; an index without an item is not an element (ignored, as in Rust).
    env = parse_envelope(json.dumps(ENV))
    assert env.item is None and env.index is None
    env = parse_envelope(json.dumps(dict(ENV, input={"data": None, "parents": {}, "index": 3})))
    assert env.item is None and env.index is None
    assert parse_envelope(json.dumps(dict(ENV, input={"item": "a", "index": 4294967295}))).index == 4294967295


@pytest.mark.parametrize("index", ["absent", None, -1, 1.5, "2", True, 4294967296])
def test_map_element_without_a_valid_index_is_refused(index: Any) -> None:
    job_input: dict[str, Any] = {"data": None, "parents": {}, "item": 1}
    if index != "absent":
        job_input["index"] = index
    with pytest.raises(EnvelopeError, match="'input.index'"):
        parse_envelope(json.dumps(dict(ENV, input=job_input)))


def test_outcomes_are_the_engines_json() -> None:
    assert json.loads(protocol.completed({"a": [1, 2.5]})) == {"kind": "completed", "result": {"a": [1, 2.5]}}
    assert json.loads(protocol.completed(None)) == {"kind": "completed", "result": None}
    assert json.loads(protocol.failed("boom", True)) == {"kind": "failed", "message": "boom", "retryable": True}
    assert json.loads(protocol.progress(42)) == {"kind": "progress", "progress": 42}
    assert json.loads(protocol.STARTED) == {"kind": "started"}
    assert json.loads(protocol.started("py-w1")) == {"kind": "started", "worker": "py-w1"}
    assert protocol.started() == protocol.STARTED
    assert json.loads(protocol.failed("late", True, "timedOut")) == {
        "kind": "failed", "message": "late", "retryable": True, "cause": "timedOut"}
    with pytest.raises(ValueError):
        protocol.completed(float("nan"))
    with pytest.raises(TypeError):
        protocol.completed(object())


def test_record_fields() -> None:
    env = parse_envelope(json.dumps(ENV))
    args = protocol.record_args(env, protocol.STARTED)
    assert dict(zip(args[::2], args[1::2])) == {
        "v": 1, "flow": "f1", "node": "resize", "attempt": 2, "job": "f1:resize:2", "outcome": '{"kind":"started"}'}


def test_report_command_is_the_resp_encoding_of_report_lua_arguments() -> None:
    """The hand-built RESP command equals a plain encoding of the arguments the
    protocol lists for report.lua (non-ASCII names included)."""
    env = parse_envelope(json.dumps(dict(ENV, node="größe", id="f1:größe:2")))
    keys = Keys("P")
    wire = protocol.ReportWire.of("0123abcd", keys, "P:q:py:7:new", "17-3", env)
    args = ["EVALSHA", "0123abcd", 3, "P:completions", "P:q:py:7:new", "P:flow:f1:jobs", "workers", "engine",
            "17-3", "größe:2", "1", *protocol.record_args(env, protocol.STARTED)]
    encoded = [str(a).encode() for a in args]
    plain = b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
    assert wire.command(True, protocol.STARTED) == plain


def test_stalled_rule_counts_claims_not_deliveries() -> None:
    # maxStalled 1: the first delivery and one claim are fine, the second claim is not.
    assert not protocol.is_stalled(1, 1)
    assert not protocol.is_stalled(2, 1)
    assert protocol.is_stalled(3, 1)
    assert protocol.is_stalled(2, 0)
    assert protocol.stalled_message(3, 1, 2000).startswith("job stalled: claimed 2 times")


def test_keys_follow_the_protocol() -> None:
    k = Keys("P")
    assert (k.takes("gpu"), k.delayed("gpu"), k.flow_jobs("f"), k.completions, k.cancel, k.workers, k.config) == (
        "P:q:gpu:takes", "P:q:gpu:delayed", "P:flow:f:jobs", "P:completions", "P:cancel", "P:workers", "P:config")
    assert (k.lane("gpu", 7, False), k.lane("gpu", 0, True)) == ("P:q:gpu:7", "P:q:gpu:0:new")


def test_lanes_are_served_in_protocol_order() -> None:
    """Index 0 is priority 9 started, 1 priority 9 new, ..., 19 priority 0 new, and
    the lane index of a (priority, new) pair is its position: 2 * (9 - p) + new."""
    lanes = Keys("P").lanes("q")
    assert len(lanes) == protocol.LANES == 20
    assert lanes[:4] == ["P:q:q:9", "P:q:q:9:new", "P:q:q:8", "P:q:q:8:new"]
    assert lanes[-2:] == ["P:q:q:0", "P:q:q:0:new"]
    for priority in range(10):
        for new in (False, True):
            assert lanes[protocol.lane_index(priority, new)] == Keys("P").lane("q", priority, new)
    # The order take.lua documents for its KEYS.
    take = (SHIPPED / "take.lua").read_text()
    assert "P:q:{queue}:9, P:q:{queue}:9:new, P:q:{queue}:8, ..., P:q:{queue}:0:new" in take


def test_queue_names_as_the_engine_validates_them() -> None:
    assert protocol.check_queue_name("gpu.v2-a_b") == "gpu.v2-a_b"
    for bad in ["", "a:b", "a b", "é"]:
        with pytest.raises(ValueError, match="queue name"):
            protocol.check_queue_name(bad)


def test_worker_refuses_bad_configuration() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Worker(queues={"py": 0})
    with pytest.raises(ValueError, match="queue name"):
        Worker(queues={"x:delayed": 1})
    with pytest.raises(ValueError, match="at least one queue"):
        Worker(queues={})
    with pytest.raises(TypeError, match="not callable"):
        Worker(queues={"py": 1}, handlers={"h": 42})  # type: ignore[dict-item]


def test_cli_queue_list() -> None:
    assert parse_queues("py=4, gpu") == {"py": 4, "gpu": 16}
    for bad, reason in [("", "no queue"), ("a=x", "not a number"), ("a=0", "at least 1"), ("a,a", "twice")]:
        with pytest.raises(ValueError, match=reason):
            parse_queues(bad)


def test_cli_handlers_reference() -> None:
    assert set(load_handlers("e2e_handlers:handlers")) == {"slow"}
    assert set(load_handlers("e2e_handlers")) == {"slow"}
    with pytest.raises(ValueError, match="cannot import"):
        load_handlers("no_such_module_here:handlers")
    with pytest.raises(ValueError, match="not a dict"):
        load_handlers("e2e_handlers:slow")


def test_cli_bad_arguments_exit_2_with_a_reason() -> None:
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [sys.executable, "-m", "dagflow_worker", "--queues", "bad:name", "--handlers", "e2e_handlers"],
        capture_output=True, text=True, env={"PYTHONPATH": f"{src}:{Path(__file__).parent}"}, timeout=30)
    assert done.returncode == 2
    assert "queue name 'bad:name' is not valid" in done.stderr
