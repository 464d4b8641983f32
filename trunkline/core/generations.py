"""Table generations: which set of Faust state (consumer groups, table changelogs) the
workers use, and the bytes a promoted table is written with (pure).

`trunkline replay rebuild --swap` promotes the machines' shadow tables by writing them
into a new generation (new app ids `<id>-g<n>`, so new changelogs and consumer groups)
and then recording that generation as the active one in the compacted control topic
`table-generations` (key: the app id). Workers read the record when they start. The
steps, their order and what a crash leaves: docs/design.md, "Table generations".

The changelog bytes are what Faust's `json` codec writes (the tables' key and value
serializer): orjson with `OPT_NON_STR_KEYS | OPT_UTC_Z`, so a worker recovers a promoted
table exactly as one it wrote itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from trunkline.core.topics import (
    billing_app_id,
    billing_internal_topics,
    generation_app_id,
    internal_topics,
)

#: the options Faust's json codec (faust.utils.json.dumps with orjson) writes with
FAUST_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


class GenerationError(ValueError):
    """A generation record that cannot be read (names the key and what is wrong)."""


@dataclass(frozen=True)
class GenerationRecord:
    """The active generation of one app id's workers."""

    app_id: str
    generation: int
    previous: int
    promoted_at: int  # epoch ms

    def encode(self) -> tuple[bytes, bytes]:
        """(key, value) as the control topic holds them."""
        value = {
            "generation": self.generation,
            "previous": self.previous,
            "promoted_at": self.promoted_at,
        }
        return self.app_id.encode(), orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def decode(key: bytes, value: bytes) -> GenerationRecord:
    """A control-topic record; GenerationError naming the key and the problem."""
    app_id = key.decode("utf-8", "replace")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise GenerationError(f"generation record {app_id!r}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise GenerationError(f"generation record {app_id!r}: not a JSON object: {raw!r:.80}")
    fields = {}
    for name in ("generation", "previous", "promoted_at"):
        v = raw.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise GenerationError(
                f"generation record {app_id!r}: {name} must be an integer >= 0, got {v!r:.40}"
            )
        fields[name] = v
    extra = sorted(set(raw) - set(fields))
    if extra:
        raise GenerationError(f"generation record {app_id!r}: unknown fields {', '.join(extra)}")
    return GenerationRecord(app_id, fields["generation"], fields["previous"], fields["promoted_at"])


def active(records: Mapping[bytes, bytes | None], app_id: str) -> int:
    """The active generation of `app_id` from the control topic's latest values (no
    record, or a tombstone: generation 0)."""
    value = records.get(app_id.encode())
    if value is None:
        return 0
    return decode(app_id.encode(), value).generation


def worker_ids(app_id: str, generation: int) -> tuple[str, str]:
    """(decision worker, billing worker) effective Faust ids in `generation`."""
    return generation_app_id(app_id, generation), generation_app_id(
        billing_app_id(app_id), generation
    )


def generation_topics(app_id: str, generation: int, decision_partitions: int) -> list[str]:
    """Every Faust internal topic of both workers in `generation`."""
    return [
        t.suffix
        for t in (
            *internal_topics(generation_app_id(app_id, generation), decision_partitions),
            *billing_internal_topics(app_id, generation),
        )
    ]


def generations_named(app_id: str, names: Iterable[str]) -> set[int]:
    """The generations n > 0 whose topics or groups appear in `names` (both workers'
    `<id>-g<n>` ids, alone or followed by `-`)."""
    ids = "|".join(re.escape(i) for i in (app_id, billing_app_id(app_id)))
    pattern = re.compile(rf"^(?:{ids})-g([1-9][0-9]*)(?:-|$)")
    return {int(m.group(1)) for n in names if (m := pattern.match(n))}


def table_key(key: str) -> bytes:
    """A table key as Faust writes it to the changelog (the json key serializer)."""
    return orjson.dumps(key, option=FAUST_JSON)


def table_value(value: Any) -> bytes:
    """A table value as Faust writes it to the changelog (the json value serializer)."""
    return orjson.dumps(value, option=FAUST_JSON)
