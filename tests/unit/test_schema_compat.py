"""Every schema stays backward compatible with each of its previously committed versions:
a reader with today's schema must read data written with any earlier one. A careless field
change (a new field without a default, a changed type, a removed enum symbol) fails here."""

import json
import subprocess
import tempfile
from pathlib import Path

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.registry import AVRO_DIR, load_schemas

REPO = AVRO_DIR.parent.parent
REL = AVRO_DIR.relative_to(REPO).as_posix()


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout


def _committed_versions() -> dict[str, dict[str, dict]]:
    """commit -> {record name -> expanded schema} for every commit that touched schemas."""
    try:
        commits = _git("log", "--format=%H", "--", REL).split()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.fail(f"schema history needs a git checkout: {exc}")
    out: dict[str, dict[str, dict]] = {}
    for commit in commits:
        with tempfile.TemporaryDirectory() as tmp:
            for name in _git("ls-tree", "--name-only", f"{commit}:{REL}").split():
                if name.endswith(".avsc"):
                    Path(tmp, name).write_text(_git("show", f"{commit}:{REL}/{name}"))
            loaded = load_schemas(Path(tmp))
            out[commit] = {n: loaded[n].expanded for n in loaded.names()}
    return out


def backward_compatible(reader: dict, writer: dict) -> tuple[bool, str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    ok = result.compatibility is SchemaCompatibilityType.compatible
    return ok, "; ".join(sorted(result.messages)) + " at " + ", ".join(sorted(result.locations))


HISTORY = _committed_versions()
CURRENT = load_schemas()


def test_history_is_available():
    assert HISTORY, "no committed version of schemas/avro found"


@pytest.mark.parametrize("commit", list(HISTORY), ids=lambda c: c[:10])
def test_current_schemas_read_every_committed_version(commit):
    problems = []
    for name, old in HISTORY[commit].items():
        if name not in CURRENT:
            problems.append(f"{name}: removed (it was in {commit[:10]})")
            continue
        ok, why = backward_compatible(CURRENT[name].expanded, old)
        if not ok:
            problems.append(f"{name} cannot read {commit[:10]}'s version: {why}")
    assert not problems, "\n".join(problems)


def _plan_with(field):
    schema = json.loads(json.dumps(CURRENT["Plan"].expanded))
    schema["fields"].append(field)
    return schema


def test_the_check_catches_a_new_field_without_default():
    ok, why = backward_compatible(
        _plan_with({"name": "tier", "type": "string"}), CURRENT["Plan"].expanded
    )
    assert not ok and "tier" in why


def test_the_check_accepts_a_new_field_with_default():
    ok, _ = backward_compatible(
        _plan_with({"name": "tier", "type": "string", "default": "basic"}),
        CURRENT["Plan"].expanded,
    )
    assert ok


def test_the_check_catches_a_type_change():
    changed = json.loads(json.dumps(CURRENT["Plan"].expanded))
    for f in changed["fields"]:
        if f["name"] == "max_concurrent_calls":
            f["type"] = "string"
    ok, _ = backward_compatible(changed, CURRENT["Plan"].expanded)
    assert not ok
