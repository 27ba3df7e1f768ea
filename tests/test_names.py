"""harness.queue.names: the queue-name grammar, ids, priorities, ordering."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.queue import names
from harness.queue.names import DEP, BadName, ItemName

ORDER_MAX = 16**16 - 1

valid_ids = st.from_regex(names.ID_PATTERN, fullmatch=True).filter(
    lambda s: ".." not in s and not s.endswith((".", ".lock")))
priorities = st.integers(0, 9)
orders = st.integers(0, ORDER_MAX).map(lambda n: f"{n:016x}")
attempts = st.integers(1, 10**6)
dues = st.one_of(st.none(), st.just(DEP), st.integers(0, 10**13))


@st.composite
def item_names(draw):
    attempt = draw(attempts)
    free = draw(st.one_of(st.just(0), st.integers(0, attempt - 1)))
    return ItemName(draw(priorities), draw(orders), draw(valid_ids), attempt, draw(dues), free)


# -- parse / format ----------------------------------------------------------


@settings(max_examples=300)
@given(item_names())
def test_format_parse_round_trip(name):
    text = str(name)
    parsed = names.parse(text)
    assert parsed == name
    assert str(parsed) == text
    assert names.try_parse(text) == name
    # The key is the same in every state of the item; ready() drops only the due part.
    assert parsed.key == f"{name.priority}.{name.order}.{name.id}"
    assert name.ready().due is None and name.ready().attempt == name.attempt
    free = f"+{name.free}" if name.free else ""
    assert str(name.ready()) == f"{name.key}~{name.attempt}{free}"
    assert parsed.counted == name.attempt - name.free >= 1
    assert "/" not in text and not text.startswith(".")
    assert names.is_entry(text)


def test_documented_examples_parse():
    assert names.parse("5.18a3f0c2d4e5b6a7.fix-flaky-test~2") == ItemName(
        5, "18a3f0c2d4e5b6a7", "fix-flaky-test", 2)
    assert names.parse("5.18a3f0c2d4e5b6a7.fix-flaky-test~3~1763787600123").due == 1763787600123
    assert names.parse("5.18a3f0c2d4e5b6a7.build-docs~1~dep").due == DEP


def test_ids_with_dots_parse():
    # The id may itself contain dots: only the first two dots split fields.
    name = names.parse("0.0000000000000001.v1.2.3-release~4")
    assert (name.priority, name.id, name.attempt) == (0, "v1.2.3-release", 4)


def test_with_attempt_keeps_key():
    name = ItemName(3, "0123456789abcdef", "job", 1)
    nxt = name.with_attempt(2, 1234)
    assert (nxt.key, nxt.attempt, nxt.due) == (name.key, 2, 1234)
    assert str(nxt) == "3.0123456789abcdef.job~2~1234"
    assert str(nxt.with_attempt(3)) == "3.0123456789abcdef.job~3"


def test_free_attempts_are_rendered_and_not_counted():
    name = ItemName(3, "0123456789abcdef", "job", 2)
    released = name.with_attempt(3, 99, free=True)       # attempt 2 was given up, not counted
    assert str(released) == "3.0123456789abcdef.job~3+1~99"
    assert (released.attempt, released.free, released.counted) == (3, 1, 2)
    again = released.with_attempt(4, free=True)
    assert str(again) == "3.0123456789abcdef.job~4+2" and again.counted == 2
    assert str(again.with_attempt(5)) == "3.0123456789abcdef.job~5+2"
    assert names.parse("3.0123456789abcdef.job~3+1~99") == released
    assert names.parse("3.0123456789abcdef.job~4+2") == again


@pytest.mark.parametrize("junk", [
    "",
    "README",
    "task.json",
    ".probe-123-abcd",
    ".nfs000000001",
    "5.0123456789abcdef",                       # no id
    "5.0123456789abcdef.job",                   # no attempt
    "5.0123456789abcdef.job~",                  # empty attempt
    "5.0123456789abcdef.job~0",                 # attempts start at 1
    "5.0123456789abcdef.job~-1",
    "5.0123456789abcdef.job~x",
    "5.0123456789abcdef.job~1~soon",            # due is epoch ms or 'dep'
    "5.0123456789abcdef.job~1~2~3",             # too many fields
    "5.0123456789abcde.job~1",                  # order too short
    "5.0123456789abcdef0.job~1",                # order too long
    "5.0123456789abcdeg.job~1",                 # order not hex
    "55.0123456789abcdef.job~1",                # priority is one digit
    "a.0123456789abcdef.job~1",
    "-.0123456789abcdef.job~1",
    "5.0123456789abcdef.~1",                    # empty id
    "5.0123456789abcdef..job~1",                # id starts with '.'
    "5.0123456789abcdef.-job~1",                # id starts with '-'
    "5.0123456789abcdef.a..b~1",                # '..' in id
    "5.0123456789abcdef.job.~1",                # id ends in '.'
    "5.0123456789abcdef.job.lock~1",            # id ends in '.lock'
    "5.0123456789abcdef.a b~1",
    "5.0123456789abcdef." + "x" * 129 + "~1",   # id too long
    "5.0123456789abcdef.job~1+",                # empty free count
    "5.0123456789abcdef.job~2+0",               # no free attempts is written without '+'
    "5.0123456789abcdef.job~2+2",               # free attempts are fewer than attempts
    "5.0123456789abcdef.job~2+3",
    "5.0123456789abcdef.job~3+01",
    "5.0123456789abcdef.job~3+x",
    "5.0123456789abcdef.job~3~1+1",
    "5.0123456789abcdef.job~1~01",              # due in canonical decimal only
    "5.0123456789abcdef.job~1~DEP",
    "5.0123456789abcdef.job~1~-5",
    "5.0123456789abcdef.job~1\n",
])
def test_junk_is_bad_name(junk):
    with pytest.raises(BadName) as info:
        names.parse(junk)
    assert repr(junk) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert names.try_parse(junk) is None


# Regression: parse() once checked the fields with int()/int(x, 16), which accept '+',
# '_', spaces, leading zeros, non-ASCII digits, '0x' and '-'; such names do not render
# back to themselves (or break the sort), and every operation addresses files by
# str(name), so the file was claimed under one name and completed under another.
@pytest.mark.parametrize("spelling", [
    "5.0123456789abcdef.job~01",
    "5.0123456789abcdef.job~+1",
    "5.0123456789abcdef.job~1_0",
    "5.0123456789abcdef.job~ 1",
    "\u0665.0123456789abcdef.job~1",             # ARABIC-INDIC DIGIT FIVE
    "5.0123456789abcdef.job~2~+5",
    "5.0x23456789abcdef.job~1",
    "5.-123456789abcdef.job~1",
    "5. 123456789abcdef.job~1",
    "5.0123456789ABCDEF.job~1",                 # orders are lowercase hex
])
def test_non_canonical_spellings_are_bad_names(spelling):
    parsed = names.try_parse(spelling)
    assert parsed is None, f"{spelling!r} parsed as {parsed} (renders as {str(parsed)!r})"


@given(item_names())
def test_parsed_names_render_back_to_the_same_text(name):
    # The property behind the test above, on every name the queue itself writes.
    assert str(names.parse(str(name))) == str(name)


# -- ordering ------------------------------------------------------------------


@given(st.lists(st.tuples(priorities, st.integers(0, ORDER_MAX), valid_ids, attempts),
                min_size=2, max_size=30, unique_by=lambda t: t[1]))
def test_string_sort_is_priority_then_enqueue_order(specs):
    built = [ItemName(p, f"{o:016x}", i, a) for p, o, i, a in specs]
    by_string = sorted(built, key=str)
    by_fields = sorted(built, key=lambda n: (n.priority, int(n.order, 16)))
    assert by_string == by_fields


def test_next_order_is_strictly_increasing_and_fixed_width():
    orders_seen = [names.next_order() for _ in range(2000)]
    assert all(len(o) == 16 and re.fullmatch(r"[0-9a-f]{16}", o) for o in orders_seen)
    assert all(a < b for a, b in zip(orders_seen, orders_seen[1:]))


def test_next_order_increases_even_if_the_clock_stalls_or_steps_back(monkeypatch):
    first = names.next_order()
    frozen = int(first, 16) - 10**9  # a clock that stepped back one second, then stopped
    monkeypatch.setattr(names.time, "time_ns", lambda: frozen)
    later = [names.next_order() for _ in range(50)]
    assert all(a < b for a, b in zip([first, *later], later))


def test_new_id_is_valid_unique_and_sorts_by_time(monkeypatch):
    ids = [names.new_id() for _ in range(500)]
    assert ids == sorted(ids), "ids made in one process sort in the order made"
    assert len(set(ids)) == len(ids)
    for item_id in ids:
        assert names.validate_id(item_id) == item_id
        assert re.fullmatch(r"\d{8}-\d{6}-\d{3}-[0-9a-f]{6}", item_id)
    now = [1_700_000_000.0]
    monkeypatch.setattr(names.time, "time", lambda: now[0])
    monkeypatch.setattr(names, "_last_id_ms", 0)  # a fresh process
    stamped = []
    for step in (0.001, 0.5, 1.0, 59.0, 3600.0, 86400.0 * 40):
        now[0] += step
        stamped.append(names.new_id())
    assert stamped == sorted(stamped)
    assert stamped[0].startswith("20231114-221320-001-")
    now[0] -= 5.0  # the clock steps back: ids still sort after the ones before
    after = [names.new_id() for _ in range(3)]
    assert [stamped[-1], *after] == sorted([stamped[-1], *after])


# -- ids -----------------------------------------------------------------------


@given(valid_ids)
def test_valid_ids_accepted(item_id):
    assert names.validate_id(item_id) == item_id


@pytest.mark.parametrize("item_id", [
    "a", "A", "0", "fix-flaky-test", "v1.2.3", "a_b", "x" * names.ID_MAX_LEN, "a.b-c_d",
])
def test_ids_accepted(item_id):
    assert names.validate_id(item_id) == item_id


@pytest.mark.parametrize("item_id", [
    "",
    "a/b",
    "/etc",
    "..",
    "../x",
    "a..b",
    ".hidden",
    "-rf",
    "_x",
    "a~1",
    "a b",
    "a\nb",
    "a\x00",
    "x" * (names.ID_MAX_LEN + 1),
    "ends.",
    "branch.lock",
    "caf\u00e9",
    "a:b",
    None,
    7,
])
def test_unsafe_ids_rejected(item_id):
    with pytest.raises(ValueError) as info:
        names.validate_id(item_id)
    assert repr(item_id) in str(info.value)


# -- priorities ----------------------------------------------------------------


@pytest.mark.parametrize(("given_value", "expected"), [
    ("high", 2), ("medium", 5), ("low", 8), ("HIGH", 2), (" Low ", 8),
    *((str(n), n) for n in range(10)),
    *((n, n) for n in range(10)),
])
def test_priority_values(given_value, expected):
    assert names.priority_value(given_value) == expected


@pytest.mark.parametrize("bad", [
    "urgent", "", " ", "10", "-1", "1.5", 10, -1, 5.0, True, False, None, [5],
])
def test_bad_priorities_rejected(bad):
    with pytest.raises(ValueError, match="invalid priority"):
        names.priority_value(bad)


# -- directory entries -----------------------------------------------------------


def test_entries_skip_dotfiles_and_reason_sidecars(tmp_path):
    for entry in ("5.0123456789abcdef.a~1", "5.0123456789abcdef.a~1.reason", ".probe-1",
                  ".stage", "junk.json"):
        (tmp_path / entry).write_text("x")
    assert sorted(names.entries(tmp_path)) == ["5.0123456789abcdef.a~1", "junk.json"]
    assert not names.is_entry(".x") and not names.is_entry("a.reason")


@settings(max_examples=300)
@given(st.lists(st.one_of(item_names().map(str), st.text(min_size=1, max_size=30),
                          st.sampled_from(["5.0000000000000000.a..b~1", "5.0000000000000000.a.~1",
                                           "5.0000000000000000.a.lock~1", "x\n5.0000000000000000.a~1",
                                           "5.0000000000000000.a~2+2", "5.0000000000000000.a~2+1"])),
                unique=True))
def test_foreign_is_exactly_what_does_not_parse(entries):
    assert names.foreign(entries) == [e for e in entries if names.try_parse(e) is None]


@settings(max_examples=300)
@given(st.lists(st.one_of(item_names().map(str), st.text(min_size=1, max_size=30),
                          st.sampled_from([".probe-1", ".reason", "a.reason", "a\n.reason",
                                           "x\n.y", "a.reason\nb", ".nfs0001.reason"])),
                unique=True))
def test_count_entries_counts_what_entries_keeps(listing):
    assert names.count_entries(listing) == len([e for e in listing if names.is_entry(e)])
