"""harness.queue.item: the item document, its validation and its error messages."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.queue import names
from harness.queue.item import InvalidItem, Item, load, validate

SOURCE = "tasks.jsonl:7"


def load_error(raw: bytes, source: str = SOURCE) -> InvalidItem:
    with pytest.raises(InvalidItem) as info:
        load(raw, source)
    err = info.value
    assert err.source == source
    assert str(err).startswith(f"{source}: ")
    assert isinstance(err, ValueError)
    return err


# -- malformed files -----------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\n", b"\t \r\n"])
def test_empty_file(raw):
    assert load_error(raw).reason == "empty file"


@pytest.mark.parametrize("raw", [
    b"{", b"{'id': 'a'}", b'{"id": "a",}', b"id: a", b"\xff\xfe\x00junk", b'{"id": "a"} x',
    b"NaN",
])
def test_malformed_json(raw):
    assert load_error(raw).reason.startswith("malformed JSON")


@pytest.mark.parametrize(("raw", "kind"), [
    (b"[]", "list"), (b'"task"', "str"), (b"42", "int"), (b"null", "NoneType"),
    (b"true", "bool"),
])
def test_json_that_is_not_an_object(raw, kind):
    assert load_error(raw).reason == f"expected a JSON object, got {kind}"


# -- wrong fields ----------------------------------------------------------------


@pytest.mark.parametrize(("doc", "field"), [
    ({"priority": "urgent"}, "priority"),
    ({"priority": 10}, "priority"),
    ({"priority": -1}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": 2.5}, "priority"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 101}, "max_attempts"),
    ({"max_attempts": "many"}, "max_attempts"),
    ({"depends_on": ["../etc"]}, "depends_on"),
    ({"depends_on": ["ok", "a/b"]}, "depends_on"),
    ({"depends_on": "other"}, "depends_on"),
    ({"id": "../../etc/passwd"}, "id"),
    ({"id": ".hidden"}, "id"),
    ({"id": "-rf"}, "id"),
    ({"id": "a~2"}, "id"),
    ({"id": ""}, "id"),
    ({"id": "x" * 129}, "id"),
    ({"id": 5}, "id"),
    ({"title": ["not", "a", "string"]}, "title"),
    ({"command": 5}, "command.str"),
    ({"meta": []}, "meta"),
    ({"colour": "blue"}, "colour"),             # unknown field
    ({"id": "ok", "dependson": ["a"]}, "dependson"),
])
def test_bad_field_is_named(doc, field):
    err = load_error(orjson.dumps(doc))
    assert f"field {field!r}" in err.reason, err.reason
    with pytest.raises(InvalidItem) as info:
        validate(doc, "cli --item")
    assert info.value.source == "cli --item"
    assert f"field {field!r}" in str(info.value)


def test_bad_dependency_id_is_quoted():
    err = load_error(orjson.dumps({"id": "a", "depends_on": ["ok", "a/b"]}))
    assert "field 'depends_on'" in err.reason and "'a/b'" in err.reason


def test_unknown_field_says_it_is_not_permitted():
    err = load_error(b'{"id": "a", "colour": "blue"}')
    assert "colour" in err.reason and "not permitted" in err.reason.lower()


def test_several_bad_fields_are_all_reported():
    err = load_error(orjson.dumps({"priority": "urgent", "max_attempts": 0, "id": "a/b"}))
    for field in ("priority", "max_attempts", "id"):
        assert f"field {field!r}" in err.reason


def test_validate_rejects_non_mapping():
    with pytest.raises(InvalidItem, match="expected a JSON object, got list"):
        validate([{"id": "a"}], "x")  # type: ignore[arg-type]


# -- good documents -----------------------------------------------------------------


def test_defaults():
    item = load(b"{}", "s")
    assert (item.id, item.priority, item.type, item.depends_on, item.max_attempts) == (
        None, names.DEFAULT_PRIORITY, "task", [], None)


def test_priority_words_and_strings():
    assert load(b'{"priority": "high"}', "s").priority == 2
    assert load(b'{"priority": "low"}', "s").priority == 8
    assert load(b'{"priority": "0"}', "s").priority == 0
    assert load(b'{"priority": 9}', "s").priority == 9


def test_validate_passes_items_through():
    item = Item(id="a")
    assert validate(item) is item


def test_items_are_immutable():
    item = Item(id="a")
    with pytest.raises(Exception):
        item.id = "b"  # type: ignore[misc]


def test_stamped_assigns_id_and_time_once():
    bare = Item(title="t")
    stamped = bare.stamped()
    assert stamped.id is not None and names.validate_id(stamped.id) == stamped.id
    assert stamped.enqueued_at is not None and stamped.enqueued_at > 1.6e9
    assert stamped.stamped() == stamped           # stamping twice changes nothing
    assert Item(id="keep").stamped().id == "keep"
    assert bare.id is None                         # the original is untouched


ids = st.from_regex(names.ID_PATTERN, fullmatch=True).filter(
    lambda s: ".." not in s and not s.endswith((".", ".lock")))
documents = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "title": st.text(max_size=20),
        "priority": st.one_of(st.integers(0, 9), st.sampled_from(["high", "medium", "low"])),
        "prompt": st.text(max_size=20),
        "command": st.one_of(st.text(max_size=10), st.lists(st.text(max_size=5), max_size=3)),
        "depends_on": st.lists(ids, max_size=3),
        "max_attempts": st.integers(1, 100),
        "meta": st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1), max_size=3),
    })


@given(documents)
def test_to_json_load_round_trip(doc):
    item = load(orjson.dumps(doc), "gen")
    again = load(item.to_json(), "disk")
    assert again == item
    assert again.id == doc["id"]
    assert again.priority == names.priority_value(doc.get("priority", names.DEFAULT_PRIORITY))
    # Sorted keys and no nulls: the bytes are a pure function of the item.
    assert item.to_json() == again.to_json()
    assert b"null" not in item.to_json() or "null" in repr(doc)
