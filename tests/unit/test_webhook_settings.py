"""The webhook edge's settings and command line."""

from __future__ import annotations

import pytest

from trunkline.cli.main import build_parser
from trunkline.core.settings import Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert (s.http_listen, s.public_url) == ("127.0.0.1:8080", "http://127.0.0.1:8080")


def test_public_url_is_kept_without_a_trailing_slash():
    s = Settings.from_env({"TRUNKLINE_PUBLIC_URL": "https://hooks.example.com/tl/"})
    assert s.public_url == "https://hooks.example.com/tl"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRUNKLINE_PUBLIC_URL", "hooks.example.com"),
        ("TRUNKLINE_PUBLIC_URL", "ftp://hooks.example.com"),
        ("TRUNKLINE_PUBLIC_URL", "https://hooks.example.com/?a=1"),
        ("TRUNKLINE_HTTP_LISTEN", "8080"),
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_the_command():
    args = build_parser().parse_args(["webhook-edge", "--listen", "127.0.0.1:9090"])
    assert (args.edge_id, args.listen) == ("webhook-1", "127.0.0.1:9090")
