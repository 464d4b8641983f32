"""The mypyc build of the SIP parser: used only while it matches its source, and it parses
every vector exactly as the pure module does."""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

import pytest

from edge.sip import message
from trunkline.core import native

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sip"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _module(tmp_path: Path, body: str) -> Path:
    source = tmp_path / "mod.py"
    source.write_text(body)
    return source


def test_without_a_build_the_module_is_pure(tmp_path):
    source = _module(tmp_path, "X = 1\n")
    assert native.state(source) == "pure"
    assert native.use_if_fresh("tl_native_probe_a", source) == "pure"
    assert "tl_native_probe_a" not in sys.modules  # left to the normal import


def test_a_build_of_another_source_is_stale_and_the_source_is_imported(tmp_path):
    source = _module(tmp_path, "X = 'from source'\n")
    # not a loadable extension: loading it would fail, so the guard must not try
    (tmp_path / f"mod{SUFFIX}").write_bytes(b"not an ELF file")
    native.stamp_path(source).write_text("0" * 64 + "\n")
    assert native.state(source) == "stale"
    try:
        assert native.use_if_fresh("tl_native_probe_b", source) == "stale"
        assert sys.modules["tl_native_probe_b"].X == "from source"
    finally:
        sys.modules.pop("tl_native_probe_b", None)


def test_a_build_stamped_with_this_source_is_used(tmp_path):
    source = _module(tmp_path, "X = 2\n")
    (tmp_path / f"mod{SUFFIX}").write_bytes(b"stand-in")
    native.stamp_path(source).write_text(native.digest(source) + "\n")
    assert native.state(source) == "compiled"
    assert native.use_if_fresh("tl_native_probe_c", source) == "compiled"
    assert "tl_native_probe_c" not in sys.modules  # the import machinery picks the build
    source.write_text("X = 3\n")  # edited after the build
    assert native.state(source) == "stale"


def test_clean_removes_the_build_and_the_stamp(tmp_path):
    source = _module(tmp_path, "X = 1\n")
    for name in (f"mod{SUFFIX}", f"mod__mypyc{SUFFIX}"):
        (tmp_path / name).write_bytes(b"x")
    native.stamp_path(source).write_text(native.digest(source))
    native.clean_one(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mod.py"]


def _outcome(module, data: bytes):
    try:
        msg = module.parse_message(data)
    except module.ParseError as exc:  # each module (build or pure) defines its own
        return ("error", str(exc), exc.status_hint, exc.partial is None)
    uri = str(msg.uri) if hasattr(msg, "uri") else None
    return (type(msg).__name__, uri, list(msg.headers), msg.body, bytes(msg))


MESSAGE_SOURCE = Path(message.__file__ or "").with_name("message.py")


@pytest.mark.skipif(
    native.state(MESSAGE_SOURCE) != "compiled", reason="no mypyc build (scripts/setup makes one)"
)
@pytest.mark.parametrize("path", sorted(VECTORS.glob("*/*.sip")), ids=lambda p: p.name)
def test_the_build_parses_every_vector_as_the_pure_module(path):
    assert message.__file__ and not message.__file__.endswith(".py")  # the build is in use
    pure = native.load_pure("tl_sip_message_pure", MESSAGE_SOURCE)
    data = path.read_bytes()
    assert _outcome(message, data) == _outcome(pure, data)


# -- the row projection (streams/projection.py) ---------------------------------------------
def row_cases():
    """Every lifecycle event's sample and variations through each branch of its row and log
    line: each provider, each end reason, optional fields absent (None) or empty."""
    from streams.projection import STATUS
    from tests.samples import sample

    for name in STATUS:
        base = sample(name, "c-1", 1_780_000_000_123)
        yield name, base
        for provider in ("SIP", "TWILIO", "TELNYX", None):
            for empty in (None, "", 0):
                r = {**base, "provider": provider}
                for key in ("provider_account_id", "from_number", "provider_status", "detail",
                            "hangup_side", "talk_ms", "provider_duration_ms", "http_status",
                            "provider_error_code", "api_key_id", "providers", "status_code",
                            "setup_ms", "hangup_cause", "bypass", "found_by_lookup"):  # fmt: skip
                    if key in r:
                        r[key] = empty if key not in ("providers",) else (empty and [])
                yield name, r
        if name == "CallEnded":
            for reason in ("completed", "cancelled", "rejected", "busy"):
                media = {"packets_sent": 1, "packets_received": 2, "packets_lost": 0,
                         "jitter_ms": 0.25, "mos": 4.125}  # fmt: skip
                yield name, {**base, "reason": reason, "media": media, "provider": "TWILIO",
                             "provider_duration_ms": 61_499}  # fmt: skip
                yield name, {**base, "reason": reason, "media": None}
        if name == "OutboundAttemptFailed":
            yield name, {**base, "retryable": False, "http_status": None,
                         "provider_error_code": "21215"}  # fmt: skip


def _row_outcome(module, name, r):
    try:
        return module.table_row(name, r, 3, 42, 1_780_000_000_999)
    except Exception as exc:  # the same error, from the build and from the source
        return ("error", type(exc).__name__, str(exc))


def test_the_projection_build_makes_every_row_as_the_pure_module():
    from streams import projection

    source = Path(projection.__file__ or "").with_name("projection.py")
    # the build is in use exactly when it is current (scripts/setup makes it)
    assert (native.state(source) == "compiled") == (not projection.__file__.endswith(".py"))
    pure = native.load_pure("tl_projection_pure", source)
    try:
        cases = list(row_cases())
        assert len(cases) > 150
        for name, r in cases:
            assert _row_outcome(projection, name, r) == _row_outcome(pure, name, r), (name, r)
    finally:
        sys.modules.pop("tl_projection_pure", None)
