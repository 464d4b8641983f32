"""trunkline.core.events: derived ids are uuid5 of the causing event, exactly."""

import hashlib
import uuid

from hypothesis import given
from hypothesis import strategies as st

from trunkline.core.events import _DERIVED, derived_id


@given(cause=st.text(), what=st.text(min_size=1))  # any text (no lone surrogates)
def test_derived_id_is_uuid5_of_the_cause(cause, what):
    assert derived_id(cause, what) == str(uuid.uuid5(_DERIVED, f"{cause}/{what}"))


def test_derived_id_of_known_events():
    for cause in ("6513270e-269e-0d37-f2a7-4de452e6b438/5", "", "é/ü", "x" * 1000):
        want = str(uuid.uuid5(_DERIVED, f"{cause}/CallRated"))
        assert derived_id(cause, "CallRated") == want
        assert uuid.UUID(want).version == 5


def test_derived_id_sets_version_and_variant_whatever_the_hash_gave():
    """The version and variant are set in the hex text: every value of the digits they
    replace (16 each) must come out as uuid5 has it."""
    seen = set()
    for i in range(2_000):
        cause = f"cause-{i}"
        assert derived_id(cause, "CallRated") == str(uuid.uuid5(_DERIVED, f"{cause}/CallRated"))
        digest = hashlib.sha1(_DERIVED.bytes + f"{cause}/CallRated".encode()).hexdigest()
        seen.add((digest[12], digest[16]))
    assert {v for _, v in seen} == set("0123456789abcdef")
    assert {v for v, _ in seen} == set("0123456789abcdef")
