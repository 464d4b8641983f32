"""SIP for the proxy edge: sans-IO messages, framing and transactions; sockets in transport.py."""
