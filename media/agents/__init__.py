"""Conversation agents: what talks to the caller. `make_agent(name)` picks one by the
route's `agent` field."""

from __future__ import annotations

from media.agents.base import Agent, CallInfo
from media.agents.greeting import GreetingAgent
from media.agents.websocket import WebSocketAgent

AGENTS: dict[str, type[Agent]] = {"greeting": GreetingAgent, "websocket": WebSocketAgent}


def make_agent(name: str) -> Agent:
    try:
        return AGENTS[name]()
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; known: {', '.join(sorted(AGENTS))}") from None


__all__ = ["AGENTS", "Agent", "CallInfo", "make_agent"]
