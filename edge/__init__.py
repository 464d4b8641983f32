"""Network edges: the SIP proxy (edge/sip) and the webhook/HTTP edge (edge/webhook)."""
