"""decode(): typed objects from bytes, text or dicts; every bad item fails with a clear reason."""

from __future__ import annotations

import json
from typing import Any

import attrs
import cattrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioflow as tf
from trioflow._decode import Decoder
from trioflow.testing import TestSource


@attrs.frozen
class Line:
    sku: str
    qty: int


@attrs.frozen
class Invoice:
    id: int
    customer: str
    amount: float
    paid: bool = False
    lines: list[Line] = attrs.field(factory=list)
    note: str | None = None


def reason_of(raw: Any) -> str:
    with pytest.raises(tf.DecodeError) as info:
        Decoder(Invoice)(raw)
    return str(info.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff{}", "Invoice: invalid UTF-8 at byte 0: invalid start byte"),
        ('{"id": 1', "Invoice: malformed JSON: Expecting ',' delimiter at line 1 column 9"),
        ("[1, 2]", "Invoice: expected an object, got array @ $"),
        ("null", "Invoice: expected an object, got null @ $"),
        ('{"customer": "a", "amount": 1}', "Invoice: required field missing @ $.id"),
        ('{"id": "7", "customer": "a", "amount": 1}', "Invoice: expected int, got str @ $.id"),
        ('{"id": 7.5, "customer": "a", "amount": 1}', "Invoice: expected int, got float @ $.id"),
        ('{"id": true, "customer": "a", "amount": 1}', "Invoice: expected int, got bool @ $.id"),
        (
            '{"id": 1, "customer": null, "amount": 1}',
            "Invoice: expected str, got null @ $.customer",
        ),
        ('{"id": 1, "customer": "a", "amount": 1, "x": 0}', "Invoice: extra fields found (x) @ $"),
        (
            '{"id": 1, "customer": "a", "amount": 1, "lines": [{"sku": "s", "qty": "2"}]}',
            "Invoice: expected int, got str @ $.lines[0].qty",
        ),
        (
            {"id": 1, "customer": "a", "amount": 1, "lines": {"sku": "s"}},
            "Invoice: expected array, got object @ $.lines",
        ),
        (
            {"id": "x", "customer": 5, "amount": 1},
            "Invoice: expected int, got str @ $.id; expected str, got int @ $.customer",
        ),
    ],
)
def test_each_problem_has_a_clear_reason(raw: Any, reason: str) -> None:
    assert reason_of(raw) == reason


def test_good_inputs_in_every_form() -> None:
    obj = {"id": 1, "customer": "ACME", "amount": 2, "lines": [{"sku": "a", "qty": 3}]}
    expected = Invoice(1, "ACME", 2.0, lines=[Line("a", 3)])
    decode = Decoder(Invoice)
    text = json.dumps(obj)
    assert decode(obj) == decode(text) == decode(text.encode()) == expected
    assert decode(bytearray(text.encode())) == expected
    assert Decoder(Invoice, format=None)(obj) == expected


def test_errors_list_each_problem_and_chain_the_cause() -> None:
    with pytest.raises(tf.DecodeError) as info:
        Decoder(Invoice)({"id": "x", "amount": "y"})
    assert info.value.errors == [
        "expected int, got str @ $.id",
        "required field missing @ $.customer",
        "expected float, got str @ $.amount",
    ]
    assert isinstance(info.value.__cause__, cattrs.BaseValidationError)
    assert isinstance(info.value, ValueError)


def test_a_lenient_converter_can_be_given() -> None:
    lenient = Decoder(Invoice, converter=cattrs.Converter())
    assert lenient({"id": "7", "customer": 5, "amount": "1.5"}) == Invoice(7, "5", 1.5)


def test_format_is_validated_and_repr_names_the_type() -> None:
    with pytest.raises(ValueError, match=r"^format='yaml' must be 'json' or None$"):
        tf.decode(Invoice, format="yaml")  # type: ignore[arg-type]
    assert repr(tf.from_iterable([]) | tf.decode(Invoice)) == (
        "from_iterable([]) | process(decode(Invoice))"
    )


async def test_in_a_pipeline_bad_items_fail_and_good_items_pass() -> None:
    src = TestSource([b'{"id": 1, "customer": "a", "amount": 1}', b"{", b'{"id": 2}'])
    out: list[Invoice] = []
    report = await (src | tf.decode(Invoice) | tf.sink(out.append)).run()
    assert out == [Invoice(1, "a", 1.0)]
    assert report.failed_by_reason == {"DecodeError": 2}
    assert [str(reason) for _, reason in src.failed] == [
        "Invoice: malformed JSON: Expecting property name enclosed in double quotes at line 1 "
        "column 2",
        "Invoice: required field missing @ $.customer; required field missing @ $.amount",
    ]


# --- generated inputs -----------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
lines = st.builds(lambda sku, qty: {"sku": sku, "qty": qty}, st.text(max_size=5), st.integers())
good_objects = st.fixed_dictionaries(
    {"id": st.integers(), "customer": st.text(), "amount": st.floats(allow_nan=False)},
    optional={
        "paid": st.booleans(),
        "lines": st.lists(lines, max_size=3),
        "note": st.text() | st.none(),
    },
)
FIELDS = ["id", "customer", "amount", "paid", "lines"]


@st.composite
def bad_items(draw: st.DrawFn) -> tuple[Any, str]:
    """A bad item and a fragment its reason must contain (the field path or the problem)."""
    obj = draw(good_objects)
    kind = draw(st.sampled_from(["missing", "unknown", "type", "json", "utf8", "not_object"]))
    if kind == "missing":
        field = draw(st.sampled_from(["id", "customer", "amount"]))
        del obj[field]
        return json.dumps(obj), f"required field missing @ $.{field}"
    if kind == "unknown":
        extra = draw(
            st.text(min_size=1, max_size=5).filter(lambda k: k not in Invoice.__annotations__)
        )
        obj[extra] = draw(json_values)
        return json.dumps(obj), "extra fields found"
    if kind == "type":
        field = draw(st.sampled_from(FIELDS))
        wrong = {
            "id": st.text() | st.booleans() | st.floats(allow_nan=False) | st.none(),
            "customer": st.integers() | st.booleans() | st.none() | st.lists(st.text(), max_size=2),
            "amount": st.text() | st.booleans() | st.none(),
            "paid": st.integers() | st.text() | st.none(),
            "lines": st.text()
            | st.integers()
            | st.dictionaries(st.text(max_size=3), st.integers()),
        }[field]
        obj[field] = draw(wrong)
        return json.dumps(obj), f"@ $.{field}"
    if kind == "json":
        text = json.dumps(obj)
        cut = draw(st.integers(1, len(text) - 1))
        return text[:cut], "malformed JSON"
    if kind == "utf8":
        data = json.dumps(obj).encode()
        at = draw(st.integers(0, len(data)))
        return data[:at] + b"\xff" + data[at:], f"invalid UTF-8 at byte {at}"
    return json.dumps(draw(st.lists(json_values) | json_scalars)), "expected an object"


@given(st.lists(st.tuples(st.booleans(), good_objects, bad_items()), max_size=12))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_items_good_pass_bad_fail_with_a_reason(
    plan: list[tuple[bool, dict[str, Any], tuple[Any, str]]],
) -> None:
    import trio

    items: list[Any] = []
    expected_good: list[int] = []
    fragments: dict[int, str] = {}
    for i, (good, obj, (bad, fragment)) in enumerate(plan):
        if good:
            items.append((i, json.dumps(obj).encode()))
            expected_good.append(i)
        else:
            items.append((i, bad))
            fragments[i] = fragment

    decode = Decoder(Invoice)
    src = TestSource(items)
    out: list[int] = []
    pipeline = src | (lambda pair: (pair[0], decode(pair[1]))) | tf.sink(lambda p: out.append(p[0]))
    report = trio.run(pipeline.run)
    assert sorted(out) == expected_good
    assert report.failed == len(fragments)
    for (i, _), reason in src.failed:
        assert isinstance(reason, tf.DecodeError)
        assert fragments[i] in str(reason), (str(reason), fragments[i])
        assert "Traceback" not in str(reason)


def test_strict_false_converts_strings_of_a_broker() -> None:
    @attrs.frozen
    class Entry:
        id: int
        amount: float

    convert = tf.decode(Entry, format=None, strict=False)
    assert convert({"id": "5", "amount": "1.5"}) == Entry(5, 1.5)
    with pytest.raises(
        tf.DecodeError, match=r"^Entry: invalid value for type, expected int @ \$\.id$"
    ):
        convert({"id": "five", "amount": "1"})
    with pytest.raises(tf.DecodeError, match=r"^Entry: expected int, got str @ \$\.id$"):
        tf.decode(Entry, format=None)({"id": "5", "amount": 1.5})


# --- documents nested too deeply for the parser ---------------------------------------------------

TOO_DEEP = (
    r"^Invoice: nesting too deep: arrays or objects nested deeper than Python's recursion limit "
    r"\(\d+\) allows$"
)


# deeper than any Python's parser allows (1 KB of "[" is too deep for 3.11's, not for 3.12's)
DEEP = 100_000


@pytest.mark.parametrize(
    "raw", [b"[" * DEEP, "[" * DEEP, '{"a": ' * DEEP, b"[" * DEEP + b"]" * DEEP]
)
def test_deep_nesting_is_a_decode_error_not_a_recursion_error(raw: Any) -> None:
    with pytest.raises(tf.DecodeError, match=TOO_DEEP) as info:
        Decoder(Invoice)(raw)
    assert info.value.errors == ["nesting too deep"]
    assert isinstance(info.value.__cause__, RecursionError)


@pytest.mark.parametrize("raw", [b"[" * 1024, "[" * 1024])
def test_a_kilobyte_of_brackets_is_a_decode_error_on_every_python(raw: Any) -> None:
    # the case: too deep on 3.11, merely unclosed on 3.12+; a DecodeError either way
    with pytest.raises(tf.DecodeError, match=r"^Invoice: (nesting too deep|malformed JSON)"):
        Decoder(Invoice)(raw)


@attrs.frozen
class Tree:
    children: list[Tree]


def test_deep_nesting_while_structuring_is_a_decode_error() -> None:
    deep: dict[str, Any] = {"children": []}
    for _ in range(5000):  # built without recursion; structuring it recurses
        deep = {"children": [deep]}
    with pytest.raises(tf.DecodeError, match=r"^Tree: nesting too deep: ") as info:
        Decoder(Tree, format=None)(deep)
    assert info.value.errors == ["nesting too deep"]
    assert Decoder(Tree, format=None)({"children": [{"children": []}]}) == Tree([Tree([])])


async def test_a_deeply_nested_item_fails_alone_with_the_stage_and_an_excerpt() -> None:
    good = b'{"id": 1, "customer": "a", "amount": 1}'
    src = TestSource([good, b"[" * DEEP, good])
    out: list[Invoice] = []
    report = await (src | tf.decode(Invoice) | tf.sink(out.append)).run()
    assert out == [Invoice(1, "a", 1.0)] * 2
    assert report.failed_by_reason == {"DecodeError": 1}
    [(data, reason)] = src.failed
    assert data == b"[" * DEEP
    assert isinstance(reason, tf.DecodeError)
    assert str(reason).startswith("Invoice: nesting too deep")
    [note] = reason.__notes__
    assert note.startswith("trioflow: in stage 'decode(Invoice)', item b'[[[[")
    assert len(note) < 300  # an excerpt, not the item
