"""trunkline.core.memory: the allocators' settings are in the environment while their
libraries load, and only then; an operator's own setting wins. Each case runs in a fresh
interpreter (the settings are read once per process), loading a stand-in module that
records the environment it was imported with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

PROBE = """
import json, os
SEEN = {k: os.environ.get(k) for k in ("JE_MALLOC_CONF", "MIMALLOC_PURGE_DELAY")}
"""


def _run(tmp_path: Path, code: str, env: dict[str, str] | None = None) -> dict:
    (tmp_path / "allocprobe.py").write_text(PROBE)
    script = (
        "import json, os, sys\n"
        "from trunkline.core.memory import keep_freed_memory\n" + code + "\n"
        "import allocprobe\n"
        "after = {k: os.environ.get(k) for k in ('JE_MALLOC_CONF', 'MIMALLOC_PURGE_DELAY')}\n"
        "print(json.dumps({'seen': allocprobe.SEEN, 'after': after, 'applied': applied}))\n"
    )
    base = {
        k: v for k, v in os.environ.items() if k not in ("JE_MALLOC_CONF", "MIMALLOC_PURGE_DELAY")
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**base, **(env or {}), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_settings_are_there_while_the_libraries_load_and_gone_afterwards(tmp_path):
    got = _run(tmp_path, "applied = keep_freed_memory(None, ('allocprobe',))")
    assert got["seen"] == {
        "JE_MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
        "MIMALLOC_PURGE_DELAY": "-1",
    }
    # children started afterwards (the stack's processes) do not inherit them
    assert got["after"] == {"JE_MALLOC_CONF": None, "MIMALLOC_PURGE_DELAY": None}
    assert "glibc" in got["applied"]  # the heap too, when kept for the process's life


def test_a_time_limit_applies_to_both_and_leaves_glibc_alone(tmp_path):
    got = _run(tmp_path, "applied = keep_freed_memory(60_000, ('allocprobe',))")
    assert got["seen"] == {
        "JE_MALLOC_CONF": "dirty_decay_ms:60000,muzzy_decay_ms:60000",
        "MIMALLOC_PURGE_DELAY": "60000",
    }
    assert "glibc" not in got["applied"]


def test_the_operators_own_setting_wins_and_stays(tmp_path):
    mine = {"JE_MALLOC_CONF": "dirty_decay_ms:1000"}
    got = _run(tmp_path, "applied = keep_freed_memory(None, ('allocprobe',))", mine)
    assert got["seen"] == {"JE_MALLOC_CONF": "dirty_decay_ms:1000", "MIMALLOC_PURGE_DELAY": "-1"}
    assert got["after"] == {"JE_MALLOC_CONF": "dirty_decay_ms:1000", "MIMALLOC_PURGE_DELAY": None}
    assert got["applied"]["JE_MALLOC_CONF"] == "dirty_decay_ms:1000"


def test_a_library_loaded_before_is_reported_not_reloaded(tmp_path):
    got = _run(
        tmp_path,
        "import allocprobe\napplied = keep_freed_memory(None, ('allocprobe',))",
    )
    assert got["seen"] == {"JE_MALLOC_CONF": None, "MIMALLOC_PURGE_DELAY": None}
    assert got["applied"]["allocprobe"] == "loaded before"
