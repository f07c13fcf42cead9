"""Every fast path behaves exactly like the general path it shortcuts.

Each fast path of the acked round trip (docs/performance.md, "Acked round
trips and connection set-up") is compared here with the path it skips, on
generated input, hostile input included: the common-envelope validation
(``Envelope.from_wire``), the JSON decoder's scanner, the reply templates
and the cached encoder, the dedup window's trim, and the hub's hot path for
events and calls (``Inbound._hot``) against the general pipeline, which a
pass-through middleware forces.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import json
import math
import platform
import sys
from collections import OrderedDict
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.trial import unittest

from warpsocket.core.dedup import SHARD_RECORDS, DedupLimits, DedupRecord, DedupWindow
from warpsocket.core.messages import ack_envelope
from warpsocket.protocol import codecs, jsontext
from warpsocket.protocol import envelope as envelope_module
from warpsocket.protocol.codecs import JsonCodec, _no_scanner, packed_result
from warpsocket.protocol.codes import ErrorCode, ProtocolError
from warpsocket.protocol.compact import CompactData
from warpsocket.protocol.datamodel import DataLimits, DataModelError, _scan, check_value, valid_text
from warpsocket.protocol.envelope import Envelope, MessageType
from warpsocket.protocol.jsontext import ENCODER, compact
from warpsocket.server.context import Context
from warpsocket.server.hub import HubOptions
from warpsocket.server.middleware import Middleware, Reject
from warpsocket.testing import HubHarness

FIELDS = ["type", "id", "timestamp", "data", "event", "ack", "ref", "ttl", "deadline"]
OTHER_FIELDS = ["room", "stream", "offset", "epoch", "code", "x-extra"]
TYPES = [t.value for t in MessageType] + ["nope", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "x" * 300, ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),
        st.tuples(inner, inner),
    ),
    max_leaves=8,
)
field_values = st.one_of(
    values,
    st.sampled_from(TYPES),
    st.integers(min_value=-1, max_value=2**54),
    st.text(min_size=1, max_size=130),
)
raw_envelopes = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=9),
    st.dictionaries(st.sampled_from(FIELDS + OTHER_FIELDS), field_values, max_size=9),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["event", "call", "ack", "result", "heartbeat", "hello"]),
            "id": st.text(min_size=0, max_size=130),
            "timestamp": st.one_of(st.integers(-1, 2**54), st.booleans(), st.floats()),
        },
        optional={
            "event": st.one_of(st.none(), st.text(max_size=260), st.integers()),
            "ack": st.one_of(st.none(), st.booleans(), st.integers(0, 1)),
            "ref": st.one_of(st.none(), st.text(max_size=130)),
            "data": values,
            "ttl": st.one_of(st.none(), st.integers(-1, 5), st.booleans()),
            "deadline": st.one_of(st.none(), st.integers(-1, 5), st.floats()),
        },
    ),
)


def general(raw: Any, **kwargs: Any) -> Envelope:
    """``from_wire`` with its common-shape branch turned off."""
    with mock.patch.object(envelope_module, "_COMMON_FIELDS", frozenset()):
        return Envelope.from_wire(raw, **kwargs)


def outcome(build: Any) -> tuple[str, Any]:
    try:
        envelope = build()
    except ProtocolError as error:
        return "error", (error.code, error.message, error.ref)
    return "ok", (envelope, dict(envelope.extra), [type(v) for v in vars_of(envelope)])


def vars_of(envelope: Envelope) -> list[Any]:
    return [getattr(envelope, name) for name in envelope.__slots__]


class CommonEnvelopeTests(unittest.TestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw_envelopes, st.booleans(), st.booleans())
    def test_from_wire_is_the_general_path(
        self, raw: dict[str, Any], strings_checked: bool, values_checked: bool
    ) -> None:
        options = {"strings_checked": strings_checked, "values_checked": values_checked}
        self.assertEqual(
            outcome(lambda: Envelope.from_wire(raw, **options)),
            outcome(lambda: general(raw, **options)),
        )

    def test_the_common_shapes_take_the_fast_branch(self) -> None:
        raw = {"type": "event", "id": "a", "timestamp": 1, "event": "e", "data": [1], "ack": True}
        built = envelope_module._common_envelope(raw, envelope_module.DEFAULT_LIMITS, True, True)
        self.assertEqual(built, general(raw))
        # Anything else is the general path's (None here).
        self.assertNotIn("room", envelope_module._COMMON_FIELDS)  # never reaches it
        for changed in ({"ack": 1}, {"id": ""}, {"type": "subscribe"}, {"ttl": 0}):
            self.assertIsNone(
                envelope_module._common_envelope(
                    {**raw, **changed}, envelope_module.DEFAULT_LIMITS, True, True
                )
            )


class EnvelopeBuildTests(unittest.TestCase):
    """``Envelope.__new__`` fills a writable twin and turns it into an Envelope
    (envelope.py ``_Draft``): the result must be the frozen dataclass it was."""

    def test_the_twin_has_every_field_in_order(self) -> None:
        names = tuple(f.name for f in dataclasses.fields(Envelope))
        self.assertEqual(Envelope.__slots__, names)
        self.assertEqual(envelope_module._Draft.__slots__, names)
        parameters = list(inspect.signature(Envelope).parameters)
        self.assertEqual(parameters, list(names))
        # Every field is set, by position or by name, defaults included.
        built = Envelope(MessageType.EVENT, "a", 1)
        defaults = [f.default for f in dataclasses.fields(Envelope)][3:-1]
        expected = [MessageType.EVENT, "a", 1, *defaults, envelope_module._NO_EXTRA]
        self.assertEqual(vars_of(built), expected)
        values = [MessageType.ERROR, "b", 2, {"k": [1]}, "e", "r", "s", 3, "ep", True, "f", 4]
        values += [4300, 5]
        by_name = Envelope(**dict(zip(names, values, strict=False)))
        self.assertEqual(vars_of(by_name)[: len(values)], values)
        self.assertEqual(vars_of(Envelope(*values)), vars_of(by_name))

    def test_it_stays_frozen_and_a_dataclass(self) -> None:
        built = Envelope(MessageType.ACK, "a", 1, ref="r")
        self.assertIs(type(built), Envelope)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            built.id = "b"  # type: ignore[misc]
        self.assertEqual(built, ack_envelope("a", 1, "r"))
        self.assertEqual(hash(built), hash(ack_envelope("a", 1, "r")))
        self.assertEqual(dataclasses.replace(built, id="b").id, "b")
        self.assertEqual(built.evolve(ref="s"), Envelope(MessageType.ACK, "a", 1, ref="s"))
        copied = copy.copy(built)
        self.assertEqual((copied, type(copied)), (built, Envelope))
        self.assertIsNot(copied, built)
        extra = Envelope(MessageType.EVENT, "a", 1, event="e", extra={"x": 1})
        self.assertEqual(copy.copy(extra).extra, {"x": 1})


json_texts = st.one_of(
    st.builds(
        lambda v: json.dumps(v), st.recursive(st.none() | st.integers() | st.text(), st.lists)
    ),
    st.builds(
        lambda raw, pad: pad + json.dumps(raw, default=str) + pad,
        raw_envelopes,
        st.sampled_from(["", " ", "\n", "\t "]),
    ),
    st.text(max_size=40),
    st.sampled_from(
        [
            '{"a":NaN}',
            '{"a":1}{"b":2}',
            '{"type":"event","id":"a","timestamp":1,"data":"\\ud800"}',
            "[" * 5000 + "]" * 5000,
            '{"type":"event","id":"a","timestamp":1e3}',
            "",
            " ",
        ]
    ),
)


def typed(value: Any) -> Any:
    """``value`` with every scalar's type made visible (1 and 1.0 differ, as
    do 0.0 and -0.0): to compare two decoders' values exactly."""
    if isinstance(value, dict):  # (as pairs: the members' order counts too)
        return [("dict", key, typed(member)) for key, member in value.items()]
    if isinstance(value, list):
        return [typed(member) for member in value]
    if isinstance(value, CompactData):
        return ("compact", value.json)
    return (type(value).__name__, repr(value))


def decoded(codec: JsonCodec, payload: bytes) -> Any:
    """What ``decode`` makes of ``payload``: the error, or every field typed."""
    try:
        envelope = codec.decode(payload, False)
    except ProtocolError as error:
        return "error", (error.code, error.message, error.ref)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))  # (``typed`` of a value ~1,000 deep)
    try:  # (as text: comparing values that deep would recurse too)
        fields = [typed(v) for v in vars_of(envelope)]
        return "ok", repr((envelope.type, fields, typed(envelope.extra)))
    finally:
        sys.setrecursionlimit(limit)


def numbers_around(edge: int) -> Any:
    return st.integers(min_value=edge - 3, max_value=edge + 3).map(str)


EVENT_HEAD = '{"type":"event","id":"m-1","timestamp":1,"event":"e","data":'

# Texts on which orjson and the standard decoder could read differently:
# integers past 53 and 64 bits, overflowing floats, surrogate escapes, depth,
# invalid UTF-8, and bytes a generator would rarely write.
number_texts = st.one_of(
    numbers_around(2**53),
    numbers_around(2**63),
    numbers_around(2**64),
    numbers_around(-(2**63)),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats().map(repr),
    st.sampled_from(["1e308", "1e309", "-1E+400", "1e-400", "0.30000000000000004", "1E2"]),
    st.sampled_from(["-0", "-0.0", "01", "1.", ".5", "+1", "0x10", "NaN", "-Infinity"]),
)
string_texts = st.one_of(
    st.text(max_size=6).map(json.dumps),
    st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"\\ud83d"', '"\\u00e9"']),
    st.sampled_from(['"\\x"', '"\x01"', '"\u2028"', '"a']),
)
hostile_payloads = st.one_of(
    st.builds(
        lambda data: (EVENT_HEAD + data + "}").encode("utf-8", "surrogatepass"),
        st.one_of(
            number_texts,
            string_texts,
            st.lists(st.one_of(number_texts, string_texts), max_size=4).map(
                lambda items: "[" + ",".join(items) + "]"
            ),
            st.one_of(
                st.integers(min_value=60, max_value=1100),
                # (about where the stdlib's scanner runs out of recursion)
                st.integers(min_value=990, max_value=1070),
            ).map(lambda n: "[" * n + "]" * n),
        ),
    ),
    st.builds(
        lambda prefix, tail: prefix + tail,
        st.sampled_from([b"", b"\xef\xbb\xbf", b" "]),
        st.binary(max_size=40),
    ),
    st.builds(
        lambda text, cut: text.encode("utf-8", "surrogatepass")[:cut],
        json_texts,
        st.integers(min_value=0, max_value=200),
    ),
)


class JsonCodecTests(unittest.TestCase):
    def test_orjson_is_the_parser_and_the_packer(self) -> None:
        """Installed by setup.cfg on CPython: the fast paths below are the ones
        a server runs (without it the standard library does all)."""
        if platform.python_implementation() == "CPython":
            import orjson

            self.assertIs(codecs.fast_loads, orjson.loads)
            self.assertIsNotNone(codecs.fast_dumps)

    def test_without_orjson_the_stdlib_does_all(self) -> None:
        """jsontext loaded where orjson cannot be imported (PyPy, or no wheel)."""
        spec = importlib.util.spec_from_file_location("jsontext_bare", jsontext.__file__)
        assert spec is not None and spec.loader is not None
        bare = importlib.util.module_from_spec(spec)
        with mock.patch.dict(sys.modules, {"orjson": None}):  # (None: ImportError)
            spec.loader.exec_module(bare)
        self.assertIsNone(bare.orjson)
        self.assertIsNone(bare.fast_loads)
        self.assertIsNone(bare.fast_dumps)
        self.assertEqual(bare.compact({"a": [1e-07, "\u00e9"]}), '{"a":[1e-07,"\u00e9"]}')

    @settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(
            json_texts.map(lambda text: text.encode("utf-8", "surrogatepass")), hostile_payloads
        )
    )
    def test_orjson_decodes_as_the_standard_decoder(self, payload: bytes) -> None:
        """The same envelope, every value of the same type, or the same error
        with the same message: orjson only reads what it reads alike."""
        codec = JsonCodec()
        found = decoded(codec, payload)
        with mock.patch.object(codecs, "fast_loads", None):
            expected = decoded(codec, payload)
        self.assertEqual(found, expected)

    def test_what_orjson_reads_otherwise_goes_to_the_standard_decoder(self) -> None:
        """Integers past 64 bits (orjson: floats) and lone surrogate escapes
        (orjson: its own error) get the standard verdicts."""
        head = EVENT_HEAD.encode()
        codec = JsonCodec()
        with self.assertRaises(ProtocolError) as caught:
            codec.decode(head + b"[18446744073709551616]}", False)
        self.assertEqual(caught.exception.code, ErrorCode.BAD_ENVELOPE)
        self.assertIn("integer outside", caught.exception.message)
        with self.assertRaises(ProtocolError) as caught:
            codec.decode(head + b'"\\ud800"}', False)
        self.assertEqual(
            (caught.exception.code, caught.exception.message),
            (ErrorCode.BAD_FRAME, "lone UTF-16 surrogate escape"),
        )
        self.assertEqual(codec.decode(head + b'"\\ud83d\\ude00"}', False).data, "\U0001f600")

    def test_deep_frames_get_the_standard_verdict(self) -> None:
        """Between where the stdlib's scanner runs out of recursion (which
        depends on the stack) and orjson's limit (1,024 levels), orjson reads
        a frame the stdlib refuses without a ``ref``: such frames are past
        the data model's depth, and go to the stdlib alone."""
        for limits in (DataLimits(), DataLimits(max_depth=512), DataLimits(max_depth=1100)):
            codec = JsonCodec(limits)
            for levels in [*range(60, 70), *range(500, 520), *range(900, 1100, 3)]:
                payload = (EVENT_HEAD + "[" * levels + "]" * levels + "}").encode()
                found = decoded(codec, payload)
                with mock.patch.object(codecs, "fast_loads", None):
                    self.assertEqual(found, decoded(codec, payload), (limits, levels))

    @settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(json_texts)
    def test_decode_with_the_scanner_is_decode_without(self, text: str) -> None:
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:
            return
        fast, slow = JsonCodec(), JsonCodec()
        slow._scan = _no_scanner
        self.assertEqual(
            outcome(lambda: fast.decode(payload, False)),
            outcome(lambda: slow.decode(payload, False)),
        )

    @settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.sampled_from(list(MessageType)),
        st.one_of(st.none(), values, st.builds(CompactData.of, st.lists(st.integers()))),
        st.one_of(st.none(), st.text(min_size=1, max_size=8)),
        st.one_of(st.none(), st.text(min_size=1, max_size=8)),
        st.booleans(),
    )
    def test_encode_is_byte_for_byte_the_encoders(
        self, kind: MessageType, data: Any, ref: str | None, event: str | None, ack: bool
    ) -> None:
        envelope = Envelope(kind, 'n-1"\u00e9', 12, data, event, ack=ack, ref=ref)
        try:
            if type(data) is CompactData:
                head = ENCODER.encode(envelope.to_wire(with_data=False)).encode("utf-8")
                expected = b"".join((head[:-1], b',"data":', data.json, b"}"))
            else:
                expected = ENCODER.encode(envelope.to_wire()).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as error:
            with self.assertRaises(type(error)):
                JsonCodec().encode(envelope).decode("utf-8")
            return
        self.assertEqual(JsonCodec().encode(envelope), expected)

    @settings(max_examples=800, deadline=None)
    @given(values)
    def test_compact_is_the_encoder(self, value: Any) -> None:
        try:
            expected: Any = ENCODER.encode(value)
        except Exception as error:
            expected = type(error)
        try:
            found: Any = compact(value)
        except Exception as error:
            found = type(error)
        self.assertEqual(found, expected)

    def test_without_the_c_encoder_the_encoder_does_it(self) -> None:
        from warpsocket.protocol import jsontext

        with mock.patch.object(jsontext, "_encode", None):
            self.assertEqual(compact({"a": [1, 2.5, "\u00e9"]}), '{"a":[1,2.5,"\u00e9"]}')
        with mock.patch.object(jsontext.json.encoder, "c_make_encoder", None):
            self.assertIsNone(jsontext._c_encoder())

    def test_without_the_scanner_decode_does_it(self) -> None:
        with mock.patch("json.JSONDecoder.__init__", autospec=True) as init:
            init.side_effect = lambda self, **kw: None  # a decoder without ``scan_once``
            bare = JsonCodec()
        self.assertIs(bare._scan, _no_scanner)
        bare._decoder = JsonCodec()._decoder
        self.assertEqual(
            bare.decode(b' {"type":"heartbeat","id":"h","timestamp":1}', False).id, "h"
        )

    def test_a_cycle_is_the_encoders_error(self) -> None:
        cycle: list[Any] = []
        cycle.append(cycle)
        with self.assertRaisesRegex(ValueError, "Circular reference"):
            compact({"a": cycle})


class DataModelTests(unittest.TestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(values, st.dictionaries(st.text(max_size=3), scalars, max_size=5)),
        st.booleans(),
        st.integers(min_value=1, max_value=8),
        st.integers(min_value=2, max_value=4),
    )
    def test_check_value_counts_and_refuses_as_the_walk(
        self, value: Any, strings_checked: bool, budget: int, depth: int
    ) -> None:
        limits = DataLimits(max_depth=4, max_values=64)
        walked = _scan(value, depth, limits.max_depth, budget, strings_checked)
        try:
            found = check_value(
                value, limits, depth=depth, strings_checked=strings_checked, budget=budget
            )
        except DataModelError:
            found = -1
        if strings_checked and type(value) is str and not valid_text(value):
            return  # (a decoder's promise the generator broke)
        self.assertEqual(found, walked)


results = st.one_of(
    values,
    st.lists(values, max_size=4),
    st.dictionaries(st.text(max_size=3), st.lists(scalars, max_size=4), max_size=3),
    st.lists(st.lists(st.integers(-(2**54), 2**54), max_size=3), max_size=3),
    st.sampled_from([{"a": "{"}, ["}", "{"], [[[[[1]]]]], {"k": [2**53 - 1, -(2**53 - 1)]}]),
)


# Flat results (the members' loop of ``packed_result``), hostile members included.
flat_members = st.one_of(
    scalars,
    st.sampled_from([2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 1e308, -0.0, True, '\\"\x00']),
    st.sampled_from([1e-7, 5e-05, 1e16, 1e22, 5e-324, 2.5, float("inf"), -float("inf")]),
    st.builds(lambda v: [v], scalars),
    st.builds(lambda v: {"k": v}, scalars),
    st.builds(lambda n: MessageType.ACK if n else ErrorCode.BAD_FRAME, st.booleans()),
    st.builds(tuple, st.lists(scalars, max_size=2)),
)
flat_results = st.one_of(
    st.dictionaries(st.text(max_size=3), flat_members, max_size=6),
    st.dictionaries(
        st.one_of(
            st.text(max_size=2), st.integers(0, 2), st.sampled_from([None, True, 1.5, "\udfff"])
        ),
        flat_members,
        max_size=3,
    ),
    st.lists(flat_members, max_size=6),
)


class PackedResultTests(unittest.TestCase):
    def assertSameJson(self, packed: bytes, expected: str) -> None:
        """The same JSON values, of the same types, as the standard encoder's;
        byte for byte without orjson (which writes ``1e-7`` for ``1e-07``)."""
        if codecs.fast_dumps is None:
            self.assertEqual(packed, expected.encode("utf-8"))
        self.assertEqual(typed(json.loads(packed)), typed(json.loads(expected)))

    def test_flat_results_are_packed_by_orjson_the_rest_by_the_stdlib(self) -> None:
        flat = {"a": 1e-07, "e": "\u00e9", "n": None}
        packed = packed_result(flat, DataLimits())
        nested = packed_result({"a": 1e-07, "l": [1]}, DataLimits())
        assert packed is not None and nested is not None
        if codecs.fast_dumps is not None:  # (orjson: CPython)
            self.assertEqual(packed.json, b'{"a":1e-7,"e":"\xc3\xa9","n":null}')
        self.assertEqual(nested.json, b'{"a":1e-07,"l":[1]}')
        with mock.patch.object(codecs, "fast_dumps", None):
            packed = packed_result(flat, DataLimits())
        assert packed is not None
        self.assertEqual(packed.json, b'{"a":1e-07,"e":"\xc3\xa9","n":null}')
        for refused in ([float("nan")], {"a": float("inf")}, [-float("inf")], ["\ud800"]):
            self.assertIsNone(packed_result(refused, DataLimits()), refused)

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(results, st.integers(min_value=2, max_value=8), st.integers(min_value=1, max_value=64))
    def test_packed_only_what_check_value_accepts_as_compact_encodes_it(
        self, value: Any, depth: int, count: int
    ) -> None:
        limits = DataLimits(max_depth=depth, max_values=count)
        packed = packed_result(value, limits)
        try:
            check_value(value, limits)
            inside = True
        except DataModelError:
            inside = False
        if packed is None:
            return  # check_value decides (the caller's fallback)
        self.assertTrue(inside, value)
        self.assertSameJson(packed.json, compact(value))

    def test_the_plain_shapes_are_packed(self) -> None:
        limits = DataLimits()
        for value in ({"seq": 1, "pad": "x" * 90}, [1, "a", None, 2.5], {"l": [1, [2]]}, [], {}):
            self.assertIsNotNone(packed_result(value, limits), value)
        for value in ({1: "a"}, {"a": {"b": 1}}, [float("nan")], ["\ud800"], [2**53], "s", 3):
            self.assertIsNone(packed_result(value, limits), value)

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(flat_results, st.integers(min_value=2, max_value=4), st.integers(1, 6))
    def test_a_flat_result_is_packed_exactly_when_check_value_accepts_it(
        self, value: Any, depth: int, count: int
    ) -> None:
        """The members' loop (flat objects and arrays of scalars), at the edges
        of the limits: packed as the encoder writes it whenever the walk
        accepts it and its members are of the exact plain types; refused
        (None, then check_value's verdict) otherwise."""
        limits = DataLimits(max_depth=depth, max_values=count)
        packed = packed_result(value, limits)
        try:
            check_value(value, limits)
            inside = True
        except DataModelError:
            inside = False
        members = value.values() if type(value) is dict else value
        plain = all(type(m) in (str, int, float, bool, type(None)) for m in members)
        if packed is None:
            self.assertFalse(inside and plain and depth > 2 and all(type(k) is str for k in value))
            return
        self.assertTrue(inside, value)
        self.assertSameJson(packed.json, ENCODER.encode(value))

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(results, min_size=1, max_size=4))
    def test_a_packed_answer_is_the_checked_one(self, returned: list[Any]) -> None:
        """Results, their retries' replays and refusals, with and without packing."""
        from warpsocket.server import dispatcher

        seen = []
        for patch in (False, True):
            harness = HubHarness()
            queue = list(returned)
            harness.hub.on("give", lambda ctx, data, queue=queue: queue.pop(0))
            client = harness.connect()
            sent = []
            packer = (lambda value, limits: None) if patch else packed_result
            with mock.patch.object(dispatcher, "packed_result", packer):
                for index in range(len(returned)):
                    call = {"type": "call", "id": f"c{index}", "timestamp": 0, "event": "give"}
                    payload = json.dumps(call).encode()
                    sent += client.feed_payload(payload) + client.feed_payload(payload)
            seen.append([(e.type, e.ref, e.code, json.dumps(e.data, default=repr)) for e in sent])
        self.assertEqual(seen[0], seen[1])
        self.flushLoggedErrors(DataModelError)


class ReferenceWindow:
    """The dedup window's trim as it was: look at the first record every time."""

    def __init__(self, limits: DedupLimits) -> None:
        self.limits = limits
        self.records: OrderedDict[tuple[str, str], DedupRecord] = OrderedDict()

    def trim(self, now_ms: int) -> None:
        horizon = now_ms - self.limits.max_age_ms
        while self.records:
            key, record = next(iter(self.records.items()))
            if record.created_ms >= horizon:
                break
            del self.records[key]

    def lookup(self, key: tuple[str, str], now_ms: int) -> DedupRecord | None:
        self.trim(now_ms)
        return self.records.get(key)

    def begin(self, key: tuple[str, str], now_ms: int) -> None:
        self.records[key] = DedupRecord(now_ms)
        while len(self.records) > self.limits.max_records:
            self.records.popitem(last=False)

    def settle(self, key: tuple[str, str], reply: Envelope) -> None:
        record = self.records.get(key)
        if record is not None:
            self.records[key] = DedupRecord(record.created_ms, reply)

    def forget(self, key: tuple[str, str]) -> None:
        self.records.pop(key, None)


class DedupTrimTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["begin", "lookup", "settle", "trim", "forget"]),
                # Two principals sending the same ids.
                st.sampled_from("pq"),
                st.sampled_from("abcdef"),
                # A clock that mostly moves on, and sometimes back.
                st.integers(min_value=-30, max_value=60),
            ),
            max_size=60,
        ),
        st.integers(min_value=1, max_value=8),
        # Records per shard: as shipped (one shard here), or 1 (up to eight
        # shards of one record, or four of one or two).
        st.sampled_from([SHARD_RECORDS, 1]),
    )
    def test_trim_forgets_what_it_always_forgot(
        self, steps: list[tuple[str, str, str, int]], max_records: int, shard_records: int
    ) -> None:
        limits = DedupLimits(max_records=max_records, max_age_ms=50)
        with mock.patch("warpsocket.core.dedup.SHARD_RECORDS", shard_records):
            window = DedupWindow(limits)
        shards = 1
        while shards * 2 * shard_records <= max_records:
            shards *= 2
        self.assertEqual(len(window._shards), shards)
        # Each shard is the old one-dict window, of its share of the records;
        # a key's shard is chosen by the hash of the whole key.
        share = DedupLimits(max_records=max_records // shards, max_age_ms=50)
        references = [ReferenceWindow(share) for _ in range(shards)]
        now = 1_000
        stamp = -1  # a record is stamped no earlier than the one before it
        for number, (action, principal, name, step) in enumerate(steps):
            now += step
            key = (principal, name)
            reference = references[hash(key) % shards]
            if action == "begin":
                found = window.lookup(key, now)
                self.assertEqual(found is None, reference.lookup(key, now) is None)
                if found is None:
                    stamp = max(stamp, now)
                    window.begin(key, now)
                    reference.begin(key, stamp)
            elif action == "lookup":
                found, expected = window.lookup(key, now), reference.lookup(key, now)
                self.assertEqual(found is None, expected is None)
                if found is not None and expected is not None:
                    self.assertEqual(found.reply, expected.reply)
            elif action == "settle":
                reply = ack_envelope(f"s-{number}", now, name)
                window.settle(key, reply)
                reference.settle(key, reply)
            elif action == "trim":
                window.trim(now)
                for each in references:
                    each.trim(now)
            else:
                window.forget(key)
                reference.forget(key)
            self.assertEqual(
                [list(s) for s in window._shards], [list(r.records) for r in references]
            )
            self.assertLessEqual(len(window), max_records)
            # The hint that lets a lookup skip the trim never passes the
            # shard's first record.
            for hint, shard in zip(window._oldest_ms, window._shards, strict=True):
                self.assertFalse(math.isnan(hint))
                if shard:
                    self.assertLessEqual(hint, next(iter(shard.values()))[0])


class PassThrough(Middleware):
    """Any middleware sends every envelope down the general path."""


def handlers(harness: HubHarness) -> None:
    hub = harness.hub
    hub.on("echo", lambda ctx, data: data)
    hub.on("none", lambda ctx, data: None)

    def fail(ctx: Context, data: Any) -> Any:
        raise RuntimeError("handler bug")

    def refuse(ctx: Context, data: Any) -> Any:
        raise Reject(ErrorCode.FORBIDDEN, "not you")

    hub.on("fail", fail)
    hub.on("refuse", refuse)
    hub.on("huge", lambda ctx, data: 2**60)
    hub.on("surrogate", lambda ctx, data: "\ud800")
    hub.on("later", lambda ctx, data: succeed(data))
    hub.on("who", lambda ctx, data: [ctx.event, ctx.envelope.id if ctx.envelope else None])

    async def coroutine(ctx: Context, data: Any) -> Any:
        return data

    hub.on("async", coroutine)


methods = st.sampled_from(
    ["echo", "none", "fail", "refuse", "huge", "surrogate", "later", "async", "who", "missing"]
)
client_messages = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["event", "call"]),
            "id": st.sampled_from(["m1", "m2", "m3", "m4"]),
            "timestamp": st.integers(0, 3_000),
            "event": methods,
        },
        optional={
            "ack": st.booleans(),
            "data": values,
            "deadline": st.integers(1, 3_000),
            "ttl": st.integers(1, 3_000),
            "room": st.just("r"),
            "x-unknown": st.integers(),
        },
    ),
    raw_envelopes,
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), client_messages),
        st.tuples(st.just("advance"), st.integers(1, 2_000)),
        st.tuples(st.just("raw"), st.sampled_from([b"{", b"[]", b'"x"', b"\xff", b"{}" * 2])),
    ),
    max_size=25,
)


def answers(sent: list[Envelope]) -> list[tuple[Any, ...]]:
    """What a client saw, without the server's own ids (each hub has its own)."""
    return [(e.type, e.ref, e.code, json.dumps(e.data, default=repr)) for e in sent]


class HotPathTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps)
    def test_the_hot_path_answers_as_the_general_path(self, script: list[Any]) -> None:
        seen = []
        for middleware in ((), (PassThrough(),)):
            harness = HubHarness(options=HubOptions(open_rooms=True), middleware=list(middleware))
            handlers(harness)
            client = harness.connect(rooms=["r"])
            member = harness.connect(rooms=["r"])
            welcomed = len(client.received)  # (the welcome: a session id of each hub's own)
            for step, value in script:
                if step == "advance":
                    harness.advance(value / 1000)
                elif step == "raw":
                    client.feed_payload(value)
                else:
                    client.feed_payload(json.dumps(value, default=str).encode("utf-8"))
            core = harness.hub.core
            seen.append(
                (
                    answers(client.received[welcomed:]),
                    [(e.data, e.offset) for e in member.events("room:r")],
                    core.duplicates_seen,
                    len(core.dedup),
                    dict(harness.hub.metrics.traffic.messages_in),
                    harness.hub.metrics.traffic.bytes_in,
                )
            )
        self.assertEqual(seen[0], seen[1])
        self.flushLoggedErrors(RuntimeError, DataModelError)  # the failing handlers, logged

    def test_the_hot_path_is_taken(self) -> None:
        harness = HubHarness()
        handlers(harness)
        client = harness.connect()
        inbound = harness.hub.port._inbound
        with mock.patch.object(inbound, "_hot", wraps=inbound._hot) as hot:
            reply = client.feed_payload(
                b'{"type":"event","id":"e1","timestamp":0,"event":"echo","ack":true}'
            )
            self.assertEqual(hot.call_count, 1)
        self.assertEqual([(e.type, e.ref) for e in reply], [(MessageType.ACK, "e1")])

    def test_answers_carry_the_hubs_time(self) -> None:
        """The hot path reads the clock once after the handler and stamps the
        answer and its dedup record with it, in milliseconds."""
        harness = HubHarness()
        handlers(harness)
        harness.advance(1234.5678)
        client = harness.connect()
        (ack,) = client.feed_payload(
            b'{"type":"event","id":"e1","timestamp":0,"event":"echo","ack":true}'
        )
        (result,) = client.feed_payload(
            b'{"type":"call","id":"c1","timestamp":0,"event":"echo","data":1}'
        )
        now_ms = int(harness.clock.seconds() * 1000)
        self.assertEqual(now_ms // 1000, 1234)
        self.assertEqual([(ack.type, ack.timestamp), (result.type, result.timestamp)],
                         [(MessageType.ACK, now_ms), (MessageType.RESULT, now_ms)])  # fmt: skip
        # A retry is answered from the record, stamped the same.
        (again,) = client.feed_payload(
            b'{"type":"call","id":"c1","timestamp":0,"event":"echo","data":1}'
        )
        self.assertEqual((again.id, again.timestamp), (result.id, now_ms))

    def test_results_outside_the_data_model_are_refused(self) -> None:
        """Scalars too: a result is checked whatever its type (4300 handler_error)."""
        harness = HubHarness()
        handlers(harness)
        client = harness.connect()
        for method in ("huge", "surrogate"):
            (reply,) = client.feed_payload(
                json.dumps({"type": "call", "id": method, "timestamp": 0, "event": method}).encode()
            )
            self.assertEqual((reply.type, reply.code), (MessageType.ERROR, 4300))
        self.flushLoggedErrors()


class GuardDeclarationTests(unittest.TestCase):
    def test_a_guard_declares_what_it_always_declared(self) -> None:
        """Made once per transport declaration: the same interfaces as made
        per connection (the transport's, less the TLS ones, plus TCP)."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.interfaces import ISSLTransport, ITCPTransport
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from twisted.web.resource import Resource
        from zope.interface import directlyProvides, implementer, providedBy

        from warpsocket.server.hub import Hub
        from warpsocket.server.protocol import WarpSocketServerFactory
        from warpsocket.server.web import GuardedSite

        @implementer(ITCPTransport)
        class TCPish(StringTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                pass

        def tls() -> StringTransport:
            transport = TCPish()
            directlyProvides(transport, ISSLTransport)
            return transport

        from warpsocket.server.security import gate

        clock = Clock()
        hub = Hub(reactor=clock, clock=clock)
        factory = WarpSocketServerFactory(hub, "ws://127.0.0.1:1")
        site = GuardedSite(Resource(), factory.gate, reactor=clock)
        addr = IPv4Address("TCP", "127.0.0.1", 1)
        gate._DECLARED.clear()
        for make in (StringTransport, TCPish, tls):
            declared = []
            for _ in range(2):  # the first made, the second from the cache
                transport = make()
                guard = site.buildProtocol(addr)
                guard.makeConnection(transport)
                declared.append(list(providedBy(guard)))
                self.assertFalse(ISSLTransport.providedBy(guard))
                self.assertEqual(
                    ITCPTransport.providedBy(guard), ITCPTransport.providedBy(transport)
                )
                for interface in providedBy(transport):
                    if not interface.isOrExtends(ISSLTransport):
                        self.assertTrue(interface.providedBy(guard))
                guard.connectionLost()
            self.assertEqual(declared[0], declared[1])
        self.assertEqual(len(gate._DECLARED), 3)


class FakeGuard:
    """What ``UpgradeDeadlines`` needs of a guard: ``_timed_out`` and ``_deadline``."""

    def __init__(self, name: int, fired: list[tuple[int, float]], clock: Any) -> None:
        self.name = name
        self.fired = fired
        self.clock = clock
        self._deadline: Any = None

    def _timed_out(self) -> None:
        self.fired.append((self.name, self.clock.seconds()))


upgrade_script = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.sampled_from([2.0, 2.0, 2.0, 0.5, 10.0])),
        st.tuples(st.just("upgrade"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
    ),
    max_size=40,
)


class UpgradeDeadlineTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(upgrade_script)
    def test_one_timer_fires_each_deadline_as_its_own_call_later(self, script: list[Any]) -> None:
        from twisted.internet.task import Clock

        from warpsocket.server.security.gate import UpgradeDeadlines

        outcomes = []
        for wheel in (False, True):
            clock = Clock()
            fired: list[tuple[int, float]] = []
            deadlines = UpgradeDeadlines(clock)
            guards: list[FakeGuard] = []
            calls: dict[int, Any] = {}
            for step, value in script:
                if step == "connect":
                    guard = FakeGuard(len(guards), fired, clock)
                    guards.append(guard)
                    if wheel:
                        deadlines.arm(guard, value)  # type: ignore[arg-type]
                    else:
                        calls[guard.name] = clock.callLater(value, guard._timed_out)
                elif step == "upgrade" and value < len(guards):
                    guard = guards[value]
                    if wheel:
                        deadlines.disarm(guard)  # type: ignore[arg-type]
                        if guard._deadline is not None and guard._deadline.active():
                            guard._deadline.cancel()
                    elif calls[value].active():
                        calls[value].cancel()
                elif step == "advance":
                    clock.advance(value)
            clock.advance(20)
            outcomes.append(sorted(fired))
            if wheel:
                self.assertEqual(len(deadlines), 0)
                self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(outcomes[0], outcomes[1])
