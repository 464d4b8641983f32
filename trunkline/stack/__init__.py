"""The local stack: typed functions that start, stop and report the services (up, down,
status), and the client for the sink's read API. The CLI is a thin layer over these."""
