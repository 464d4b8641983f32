"""The webhook service's own pieces that need no broker: a target's URL check (made once
per URL, refusals every time) and the derived ids it sends (the same as uuid5's)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st

from streams.webhooks import book as bk
from streams.webhooks import targets
from streams.webhooks.service import Target
from trunkline.core import events


@given(st.text(), st.text())
def test_derived_ids_and_webhook_ids_are_uuid5s(cause: str, what: str):
    assert events.derived_id(cause, what) == str(uuid.uuid5(events._DERIVED, f"{cause}/{what}"))
    assert bk.webhook_id(cause, what) == "msg_" + uuid.uuid5(bk._WEBHOOK_IDS, f"{cause}/{what}").hex


def test_a_targets_url_is_checked_before_it_is_used_and_refused_every_time():
    async def check() -> None:
        strict = Target("s", b"k" * 16, allow_private=False, limit=4)
        private = Target("p", b"k" * 16, allow_private=True, limit=4)
        try:
            for _ in range(2):  # a refusal is not remembered as a pass
                with pytest.raises(targets.TargetRefused, match=r"10\.0\.0\.7"):
                    strict.checked_url("http://10.0.0.7:8080/hooks")
                with pytest.raises(targets.TargetRefused, match=r"169\.254\.169\.254"):
                    private.checked_url("http://169.254.169.254/latest")  # metadata: never
                with pytest.raises(targets.TargetRefused, match="only http"):
                    private.checked_url("ftp://example.com/x")
            url = private.checked_url("http://10.0.0.7:8080/hooks?a=1")
            assert url == yarl.URL("http://10.0.0.7:8080/hooks?a=1")
            assert private.checked_url("http://10.0.0.7:8080/hooks?a=1") is url  # parsed once
            assert strict.checked_url("https://hooks.example.com/x").host == "hooks.example.com"
        finally:
            await strict.close()
            await private.close()

    asyncio.run(check())
