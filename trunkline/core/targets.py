"""Which network addresses an outgoing webhook may reach (pure, no I/O).

Lifecycle webhooks POST to URLs operators configure; the service must not become a way
into the machines around it (server-side request forgery). The rule, applied to every
address a target's name resolves to (and to literal IPs in the config):

- link-local (169.254.0.0/16, fe80::/10) and cloud metadata (fd00:ec2::254, and
  169.254.169.254 within the former) are refused always;
- private, loopback, unspecified, shared (100.64/10), reserved and multicast addresses
  are refused unless the subscription sets ``allowPrivateTargets`` (local development and
  tests);
- IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.

`streams/webhooks/targets.py` applies it after DNS resolution; `trunkline.core.config`
applies it to literal IPs at `config check`.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: refused whatever the subscription says
ALWAYS_REFUSED: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local, AWS/GCP/Azure metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
)
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT


def refusal(address: str | IPAddress, allow_private: bool) -> str | None:
    """Why `address` may not be a webhook target, or None when it may."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net in ALWAYS_REFUSED:
        if ip.version == net.version and ip in net:
            return f"{ip} is a link-local or cloud metadata address (always refused)"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip} is a loopback address (set allowPrivateTargets to allow it)"
    if ip.is_private or (ip.version == 4 and ip in SHARED):
        return f"{ip} is a private address (set allowPrivateTargets to allow it)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved or not ip.is_global:
        return f"{ip} is not a public unicast address (set allowPrivateTargets to allow it)"
    return None
