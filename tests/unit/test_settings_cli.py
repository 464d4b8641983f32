from pathlib import Path

import pytest

from streams.queries import parse_duration
from trunkline import cli
from trunkline.core.settings import Settings, SettingsError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


def test_defaults(tmp_path):
    s = Settings.from_env({"TRUNKLINE_STATE_DIR": str(tmp_path)})
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.kafka_controller_port == 19093
    assert s.clickhouse_dsn == f"chdb://{tmp_path / 'clickhouse'}"
    assert s.topic_prefix == "trunkline."
    assert s.is_embedded_clickhouse
    assert (s.sink_priority, s.sink_flush_ms) == ("idle", 2_000)
    assert Settings.from_env({"TRUNKLINE_SINK_PRIORITY": "normal"}).sink_priority == "normal"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRUNKLINE_KAFKA_PORT": "99999"}, "TRUNKLINE_KAFKA_PORT=99999 is outside 1..65535"),
        ({"TRUNKLINE_KAFKA_PORT": "abc"}, "TRUNKLINE_KAFKA_PORT='abc' is not a port number"),
        ({"TRUNKLINE_KAFKA_BOOTSTRAP": "localhost"}, "'localhost' is not host:port"),
        ({"TRUNKLINE_CLICKHOUSE_DSN": "mysql://x"}, "scheme must be chdb://, http:// or https://"),
        ({"TRUNKLINE_TOPIC_PREFIX": "a b"}, "TRUNKLINE_TOPIC_PREFIX='a b'"),
        ({"TRUNKLINE_SINK_PRIORITY": "low"}, "TRUNKLINE_SINK_PRIORITY='low': must be one of"),
        ({"TRUNKLINE_SINK_FLUSH_MS": "0"}, "TRUNKLINE_SINK_FLUSH_MS"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1w", 604800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "5y", "-1h", "1.5h"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_config_check_ok(capsys):
    assert cli.main(["config", "check", str(EXAMPLE)]) == 0
    assert "valid (2 plans, 2 businesses" in capsys.readouterr().out


def test_config_check_refuses_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace('"127.0.0.0/8"', '"127.0.0.0/33"'))
    assert cli.main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "numbers[0] (id=abc).allowedSourceIps[1]: '127.0.0.0/33' is not an IP or CIDR" in err


def test_config_check_missing_file(tmp_path, capsys):
    assert cli.main(["config", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_calls_list_rejects_bad_since(capsys):
    assert cli.main(["calls", "list", "--since", "yesterday"]) == 2
    assert "--since: 'yesterday' is not a duration" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--kafka-port", "0", "status"],
        ["--bootstrap", "nohost", "status"],
        ["frobnicate"],
        ["kafka", "sideways"],
        ["calls", "list", "--limit", "0"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_env_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("TRUNKLINE_CLICKHOUSE_DSN", "ftp://x")
    assert cli.main(["status"]) == 2
    assert "TRUNKLINE_CLICKHOUSE_DSN" in capsys.readouterr().err
