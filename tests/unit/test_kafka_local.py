"""The local broker's command line and the extra JVM options an operator may pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from trunkline.core.kafka_local import JVM_OPTS_ENV, KafkaLocalError, broker_command, jvm_options


def test_no_variable_means_no_extra_options() -> None:
    assert jvm_options({}) == []
    assert jvm_options({JVM_OPTS_ENV: "   "}) == []


def test_options_are_split_like_a_shell() -> None:
    env = {JVM_OPTS_ENV: "-Xlog:gc:file=/tmp/gc.log:time '-Dname=a b' -Xmn256m"}
    assert jvm_options(env) == ["-Xlog:gc:file=/tmp/gc.log:time", "-Dname=a b", "-Xmn256m"]


def test_bad_quoting_names_the_variable() -> None:
    with pytest.raises(KafkaLocalError, match=JVM_OPTS_ENV + ".*quotation"):
        jvm_options({JVM_OPTS_ENV: "-Dx='unterminated"})


def test_a_word_that_is_not_an_option_is_refused() -> None:
    with pytest.raises(KafkaLocalError, match="'Xmx1g' is not a JVM option"):
        jvm_options({JVM_OPTS_ENV: "-Xms1g Xmx1g"})


def test_extra_options_come_after_the_defaults_and_before_the_main_class() -> None:
    cmd = broker_command("java", "512m", "/jars/*", Path("/s/server.properties"), ["-Xmx1g"])
    assert cmd[0] == "java"
    assert cmd.index("-Xmx512m") < cmd.index("-Xmx1g")  # the JVM keeps the last one
    assert cmd.index("-Xmx1g") < cmd.index("-cp") < cmd.index("kafka.Kafka")
    assert cmd[-2:] == ["kafka.Kafka", "/s/server.properties"]
    assert cmd[cmd.index("-cp") + 1] == "/jars/*"
