"""The local stack as typed functions: start, stop and report the services (`local`:
up, down, status), the broker, topics and config steps they are made of, the demo call,
the heartbeat stand-in, and one client for the call history (`calls`: the sink's read
API, or the ClickHouse store itself when no sink owns it).

The CLI (`trunkline.cli`) is a thin layer over these: it parses arguments, calls one
function, and renders the dataclass it gets back. Nothing here parses argv, prints, or
knows exit codes; errors are `StackError` (a runtime failure) or `BadInput` (the
operator's input is wrong), and long operations report through a `Progress`.
"""
