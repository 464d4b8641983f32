"""The shared base every service stands on: settings, the one Kafka module, topic
declarations, the event envelope and ids, table helpers for state machines, operator
config validation, process supervision and small asyncio pieces.

Nothing here imports `edge`, `streams`, `media` or the CLI (pyproject.toml's
import-linter contracts); `schemas` (the contract) is the only project package below.
"""
