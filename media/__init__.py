"""Media nodes: SIP backend listener, SDP/RTP, codecs, provider WebSockets, agents."""
