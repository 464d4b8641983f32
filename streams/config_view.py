"""Read-only access to the config tables (Faust GlobalTables or plain dicts in tests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Record = dict[str, Any]


class ConfigView:
    """Lookups over the six config sections, each a mapping id -> record (Avro field names)."""

    def __init__(self, sections: Mapping[str, Mapping[str, Record | None]]) -> None:
        self.sections = sections

    def _get(self, section: str, key: str | None) -> Record | None:
        if not key:
            return None
        table = self.sections.get(section)
        if table is None:
            return None
        value = table.get(key)
        return value if value else None

    def business(self, business_id: str) -> Record | None:
        return self._get("businesses", business_id)

    def plan(self, plan_id: str) -> Record | None:
        return self._get("plans", plan_id)

    def number(self, phone_id: str) -> Record | None:
        return self._get("numbers", phone_id)

    def route(self, route_id: str) -> Record | None:
        return self._get("routes", route_id)

    def backend(self, backend_id: str) -> Record | None:
        return self._get("backends", backend_id)

    def find_number(self, number: str, business_id: str | None = None) -> Record | None:
        """A number record by its dialled value (optionally within one business)."""
        for record in (self.sections.get("numbers") or {}).values():
            if not record or record.get("number") != number:
                continue
            if business_id is None or record.get("business_id") == business_id:
                return record
        return None

    def backends_in(self, region_id: str) -> list[Record]:
        return sorted(
            (
                r
                for r in (self.sections.get("backends") or {}).values()
                if r and r.get("region_id") == region_id
            ),
            key=lambda r: str(r["id"]),
        )

    def bypass_backends(self, business_id: str, phone_id: str | None) -> list[str]:
        """Backend ids an admin pinned this business (or this number) to, number rules first."""
        rules = [
            r
            for r in (self.sections.get("bypassRules") or {}).values()
            if r
            and r.get("business_id") == business_id
            and (r.get("phone_id") in (None, "", phone_id))
        ]
        rules.sort(key=lambda r: (r.get("phone_id") in (None, ""), str(r.get("id"))))
        return [str(r["backend_id"]) for r in rules]
