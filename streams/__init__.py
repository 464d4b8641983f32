"""Stream processing: the Faust app, its tables and agents, and the sinks."""

from pathlib import Path

from trunkline.core.native import use_if_fresh

# scripts/setup compiles projection.py with mypyc; a build of an older source is never used
use_if_fresh("streams.projection", Path(__file__).with_name("projection.py"))
