"""Loads the `.avsc` files in `schemas/avro/` into parsed, fingerprinted schemas.

Files are named `<namespace>.<Name>.avsc` so fastavro's `load_schema` can resolve the
named types they share (Envelope, Provider, MediaStats) from the same folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

AVRO_DIR = Path(__file__).resolve().parent / "avro"
NAMESPACE = "trunkline"

#: The top-level records that travel on topics (the others are only referenced).
LIFECYCLE_EVENTS = (
    "CallOffered",
    "CallAdmitted",
    "CallRejected",
    "CallRouted",
    "CallAccepted",
    "CallAnswered",
    "CallEnded",
    "CallProgress",
    "OutboundCallRequested",
    "OutboundAttempt",
    "OutboundAttemptFailed",
    "CallCost",
)
CONFIG_RECORDS = (
    "Plan",
    "Business",
    "Route",
    "PhoneNumber",
    "BackendServer",
    "BypassRule",
    "ProviderAccount",
    "ApiKey",
    "RatePlan",
    "WebhookSubscription",
)
OTHER_RECORDS = ("BackendHeartbeat", "RoutingTick", "PartitionTick", "OutboundReport")
#: billing and lifecycle webhooks: CallRated (topic billing), the webhook service's
#: delivery log and operator commands
BILLING_RECORDS = ("CallRated", "WebhookAttempt", "WebhookCommand")
TOPLEVEL_RECORDS = LIFECYCLE_EVENTS + CONFIG_RECORDS + OTHER_RECORDS + BILLING_RECORDS


@dataclass(frozen=True)
class LoadedSchema:
    name: str  # short name, e.g. "CallOffered"
    fullname: str  # "trunkline.CallOffered"
    expanded: dict[str, Any]  # named types inlined: what a registry stores
    parsed: Any  # fastavro's parsed form, for the reader/writer
    canonical: str  # Avro parsing canonical form
    fingerprint: bytes  # CRC-64-AVRO, 8 bytes little-endian (single-object header)


class SchemaSet:
    """All top-level schemas of one folder, by short name and by fingerprint."""

    def __init__(self, schemas: dict[str, LoadedSchema]) -> None:
        self.by_name = schemas
        self.by_fingerprint = {s.fingerprint: s for s in schemas.values()}
        self.by_fullname = {s.fullname: s for s in schemas.values()}

    def __getitem__(self, name: str) -> LoadedSchema:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"unknown record type {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def names(self) -> list[str]:
        return sorted(self.by_name)


def _load_one(path: Path) -> LoadedSchema:
    expanded = load_schema(str(path), _write_hint=False)
    # load_schema returns the expanded schema; re-serialise through json to drop any
    # fastavro-private keys and get a plain dict a registry can store.
    expanded = json.loads(json.dumps(expanded))
    canonical = to_parsing_canonical_form(expanded)
    fp_hex = fingerprint(canonical, "CRC-64-AVRO")
    # fastavro prints the fingerprint as the hex of its little-endian bytes.
    fp = bytes.fromhex(fp_hex)
    fullname = expanded["name"]
    name = fullname.rsplit(".", 1)[-1]
    return LoadedSchema(
        name=name,
        fullname=fullname if "." in fullname else f"{NAMESPACE}.{fullname}",
        expanded=expanded,
        parsed=parse_schema(expanded),
        canonical=canonical,
        fingerprint=fp,
    )


def load_schemas(folder: Path = AVRO_DIR, names: tuple[str, ...] | None = None) -> SchemaSet:
    """Load the top-level records of `folder` (all of TOPLEVEL_RECORDS by default)."""
    wanted = names if names is not None else TOPLEVEL_RECORDS
    out: dict[str, LoadedSchema] = {}
    for name in wanted:
        path = folder / f"{NAMESPACE}.{name}.avsc"
        if not path.exists():
            continue
        out[name] = _load_one(path)
    return SchemaSet(out)


_DEFAULT: SchemaSet | None = None


def default_schemas() -> SchemaSet:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_schemas()
    return _DEFAULT
