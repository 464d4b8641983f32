"""mypyc builds of pure modules, used only while they match their source.

`scripts/setup` compiles the modules of `MODULES` (the SIP parser, ``edge/sip/message.py``;
the generated Avro readers; the billing machine, retention, the projection and the
replay's rebuild loop, ``streams/{billing,retention,projection,rebuild}.py``)
with mypyc, which ships with mypy: the same typed Python, 1.4-2x as fast (bench/sip_parse.py
and bench/replay_billing.py show it). The extension lands next to the source, where
Python's import prefers it, so a stamp beside it records the source's SHA-256 at build
time. `use_if_fresh` (called by ``edge/sip/__init__.py`` and ``streams/__init__.py``)
imports the pure source instead when the stamp is missing or differs: an edited module
is never shadowed by a stale build. Without a C compiler the
build fails quietly and everything runs on the pure module.

    python -m trunkline.core.native build    # compile what changed (scripts/setup runs this)
    python -m trunkline.core.native status   # compiled, stale or pure, per module
    python -m trunkline.core.native clean    # remove the builds
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

log = logging.getLogger("trunkline.core.native")

ROOT = Path(__file__).resolve().parents[2]
#: module name -> source, relative to the project root
MODULES = {
    "edge.sip.message": "edge/sip/message.py",
    "schemas.avro_compiled": "schemas/avro_compiled.py",
    "streams.billing": "streams/billing.py",
    "streams.projection": "streams/projection.py",
    "streams.rebuild": "streams/rebuild.py",
    "streams.retention": "streams/retention.py",
}
#: generated modules: name -> "module:function" that writes its source to the given path
#: (before each build; the source is not kept in git)
GENERATED = {"schemas.avro_compiled": "schemas.avro_reader:write_module"}


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def stamp_path(source: Path) -> Path:
    return source.with_suffix(".mypyc-stamp")


def built_files(source: Path) -> list[Path]:
    """The extension files a mypyc build of `source` leaves beside it."""
    return [
        source.with_name(stem + suffix)
        for stem in (source.stem, f"{source.stem}__mypyc")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if source.with_name(stem + suffix).exists()
    ]


def state(source: Path) -> str:
    """'compiled' (a build of this very source), 'stale' (a build of another) or 'pure'."""
    if not any(p.name.startswith(source.stem + ".") for p in built_files(source)):
        return "pure"
    stamp = stamp_path(source)
    fresh = stamp.exists() and stamp.read_text().strip() == digest(source)
    return "compiled" if fresh else "stale"


def use_if_fresh(name: str, source: Path) -> str:
    """Before `name` is first imported: when its build is stale, import the pure source
    under that name (so the stale extension is never loaded). Returns the state."""
    current = state(source)
    if current == "stale" and name not in sys.modules:
        log.warning("%s changed since it was compiled: using the pure module", source)
        load_pure(name, source)
    return current


def load_pure(name: str, source: Path) -> ModuleType:
    """Import `source` as module `name` from the .py file, whatever builds sit beside it."""
    loader = importlib.machinery.SourceFileLoader(name, str(source))
    spec = importlib.util.spec_from_file_location(name, source, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def build(force: bool = False) -> dict[str, str]:
    """Compile every module whose build is missing or stale; returns name -> outcome."""
    out: dict[str, str] = {}
    mypyc = Path(sys.executable).with_name("mypyc")
    for name, rel in MODULES.items():
        source = ROOT / rel
        if name in GENERATED:
            module, function = GENERATED[name].split(":")
            getattr(importlib.import_module(module), function)(source)
        if not force and state(source) == "compiled":
            out[name] = "up to date"
            continue
        clean_one(source)
        want = digest(source)
        # mypyc runs a setuptools build in its working directory, which must not be the
        # project root (setuptools would read our pyproject.toml): a scratch directory
        # with links to the packages; the extension is copied next to the real source.
        with tempfile.TemporaryDirectory(prefix="trunkline-mypyc-") as scratch:
            for package in {rel.split("/")[0], "trunkline"}:
                Path(scratch, package).symlink_to(ROOT / package)
            proc = subprocess.run(
                [str(mypyc), "--ignore-missing-imports", rel],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=600,
            )
        if proc.returncode != 0 or not built_files(source):
            clean_one(source)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            out[name] = "failed (pure Python in use): " + " | ".join(tail)
            continue
        if digest(source) != want:  # edited during the build: do not vouch for it
            clean_one(source)
            out[name] = "source changed during the build (pure Python in use)"
            continue
        stamp_path(source).write_text(want + "\n")
        out[name] = "compiled"
    return out


def clean_one(source: Path) -> None:
    for path in built_files(source):
        path.unlink()
    stamp_path(source).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "build":
        for name, outcome in build(force="--force" in args).items():
            print(f"{name}: {outcome}")
    elif command == "status":
        for name, rel in MODULES.items():
            print(f"{name}: {state(ROOT / rel)}")
    elif command == "clean":
        for rel in MODULES.values():
            clean_one(ROOT / rel)
    else:
        print(f"unknown command {command!r}: expected build, status or clean", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
