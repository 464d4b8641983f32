"""SIP for the proxy edge: sans-IO messages, framing and transactions; sockets in transport.py."""

from pathlib import Path

from trunkline.core.native import use_if_fresh

# scripts/setup compiles message.py with mypyc; a build of an older source is never used
use_if_fresh("edge.sip.message", Path(__file__).with_name("message.py"))
