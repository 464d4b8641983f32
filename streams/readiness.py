"""When the worker can decide calls: its `/health/` answers 200 only then (503 before,
naming what it waits for), and `trunkline up`, `status` and the tests wait for that.

A worker process answers HTTP long before it can decide anything: it must first join
its consumer group (after a SIGKILL the coordinator holds the join until the dead
member's session expires, 10 s), be assigned partitions, and recover its tables from
their changelogs (Faust's recovery); only then do its agents read the decision topics.
Every rebalance (a worker joins or leaves) goes through the same steps again. Pure: the
I/O layer (streams/app.py) reads Faust's flags into a `WorkerState`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerState:
    """What Faust says about the worker's group membership and its tables, now."""

    generation: int  # the consumer group's generation this worker joined (0: none yet)
    rebalancing: bool  # partitions revoked, the new assignment not yet recovered
    recovering: bool  # reading changelogs into the tables
    recovered: bool  # a recovery has completed since the process started
    remaining: int = 0  # changelog records still to read while recovering


def waiting_for(state: WorkerState) -> list[str]:
    """What the worker still waits for before it can decide a call; empty: ready."""
    if state.generation <= 0 and not state.recovered:
        return ["joining the consumer group (partitions not assigned yet)"]
    if state.recovering:
        return [f"recovering tables from their changelogs ({state.remaining} records left)"]
    if state.rebalancing or not state.recovered:
        return [f"rebalancing (group generation {state.generation}): tables not recovered yet"]
    return []
