"""Stream processing: the Faust app, its tables and agents, and the sinks."""

from pathlib import Path

from trunkline.core.native import use_if_fresh

# scripts/setup compiles these with mypyc; a build of an older source is never used
for _name in ("billing", "projection", "rebuild", "retention"):
    use_if_fresh(f"streams.{_name}", Path(__file__).with_name(f"{_name}.py"))
