"""Provider media WebSocket protocols, pure: parse what arrives, build what we send."""
