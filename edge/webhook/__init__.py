"""The provider webhook edge: Twilio, Telnyx and Vonage calls into the decision path.

Pure parts: `base` (shared types, the error family), one adapter per provider
(`twilio`, `telnyx`, `vonage`: verify, decode a request into an event, encode the
answer), `accounts` (provider accounts with their secrets resolved) and `calls` (the
webhook call core: offer -> wait for the decision -> answer). I/O: `service` (aiohttp and
Kafka).
"""
