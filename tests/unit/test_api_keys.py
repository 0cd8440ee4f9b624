"""API keys: their form, scope patterns and roles (pure logic; the SQL twin of `covers` is
checked against this table in tests/integration/test_api_keys_db.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine import clock, keys
from engine.keys import Place

# (patterns, place, covered): the one table both `covers` and SQL's api_scope_covers answer.
COVERAGE = [
    (["*"], Place("project", "acme/vision"), True),
    (["*"], Place("registry", "model"), True),
    (["acme/vision"], Place("project", "acme/vision"), True),
    (["acme/vision"], Place("project", "acme/visions"), False),
    (["acme/vision"], Place("project", "acme2/vision"), False),
    (["acme/*"], Place("project", "acme/vision"), True),
    (["acme/*"], Place("project", "acmex/vision"), False),
    (["acme/*"], Place("registry", "acme"), False),
    (["registry:model"], Place("registry", "model"), True),
    (["registry:model"], Place("registry", "models"), False),
    (["registry:model"], Place("project", "registry/model"), False),
    (["registry:*"], Place("registry", "anything"), True),
    (["registry:*"], Place("project", "acme/vision"), False),
    (["other/x", "acme/*"], Place("project", "acme/nlp"), True),
    (["other/x", "registry:model"], Place("project", "acme/nlp"), False),
]


@pytest.mark.parametrize(("patterns", "place", "covered"), COVERAGE)
def test_scope_patterns_cover_what_they_name(patterns, place, covered):
    assert keys.covers(patterns, place) is covered


def test_a_key_is_256_random_bits_with_a_recognisable_prefix():
    made = {keys.generate() for _ in range(100)}
    assert len(made) == 100
    for key in made:
        assert key.startswith("eng_") and len(key) == 4 + 43 and keys.well_formed(key)
    assert keys.digest("eng_x") == keys.digest("eng_x") != keys.digest("eng_y")
    assert len(keys.digest("eng_x")) == 64


@pytest.mark.parametrize(
    "bad", ["", "eng_", "eng_short", "Bearer eng_" + "a" * 43, "key_" + "a" * 43, "eng_" + "a" * 42 + "!"]
)
def test_malformed_keys_are_recognised(bad):
    assert not keys.well_formed(bad)


@pytest.mark.parametrize(
    "pattern", ["*", "acme/vision", "acme/*", "registry:model", "registry:*", "a.b/c_d-e"]
)
def test_scope_patterns_accepted(pattern):
    assert keys.check_scope(pattern) == pattern


@pytest.mark.parametrize(
    "pattern", ["", "acme", "*/vision", "acme/vi*", "acme/vision/x", "registry:", "registry:a/b", "a b/c"]
)
def test_scope_patterns_refused_with_the_forms_allowed(pattern):
    with pytest.raises(ValueError, match="entity/project, entity/\\*, registry:NAME, registry:\\* or \\*"):
        keys.check_scope(pattern)


def test_admin_may_do_what_ingest_and_read_may_but_they_not_each_other():
    assert keys.allows("admin", "ingest") and keys.allows("admin", "read") and keys.allows("admin", "admin")
    assert keys.allows("ingest", "ingest") and not keys.allows("ingest", "read")
    assert keys.allows("read", "read") and not keys.allows("read", "ingest")
    assert not keys.allows("ingest", "admin") and not keys.allows("read", "admin")


def _key(expires_at=None) -> keys.ApiKey:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return keys.ApiKey(1, "trainer", "ingest", ("acme/*",), at, None, expires_at, None)


class _Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_verified_key_is_taken_for_max_age_seconds_then_asked_for_again():
    ticks = _Ticks()
    verified = keys.Verified(1.0, monotonic=ticks)
    presented, found = keys.generate(), _key()
    assert verified.get(presented) is None  # never found: ask the database
    verified.remember(presented, found)
    assert verified.get(presented) == found
    assert verified.get(keys.generate()) is None  # another key is not this one
    ticks.now += 0.999
    assert verified.get(presented) == found
    ticks.now += 0.001
    assert verified.get(presented) is None  # max_age old: the database is asked again (a revocation shows)


def test_a_verified_key_that_expires_is_refused_at_its_expiry_not_after_max_age():
    expiry = datetime(2026, 3, 1, 12, tzinfo=UTC)
    verified = keys.Verified(60.0, monotonic=_Ticks())
    presented = keys.generate()
    with clock.frozen(expiry - timedelta(seconds=1)):
        verified.remember(presented, _key(expiry))
        assert verified.get(presented) is not None
    with clock.frozen(expiry):
        assert verified.get(presented) is None


def test_max_age_zero_keeps_nothing_and_the_oldest_entry_makes_room():
    presented = keys.generate()
    none = keys.Verified(0.0)
    none.remember(presented, _key())
    assert none.get(presented) is None
    ticks = _Ticks()
    small = keys.Verified(10.0, size=2, monotonic=ticks)
    first, second, third = keys.generate(), keys.generate(), keys.generate()
    for presented in (first, second, third):
        small.remember(presented, _key())
        ticks.now += 1
    assert [small.get(p) is not None for p in (first, second, third)] == [False, True, True]
