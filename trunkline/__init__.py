"""Operator tooling for trunkline: settings, the local Kafka broker, topics, config, CLI."""

__version__ = "0.1.0"
