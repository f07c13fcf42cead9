"""Client addresses: CIDR allow and deny lists, proxies, and per-address keys."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a peer or header string; None if it is not one.

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) become IPv4, so that
    one rule covers a client whatever socket family it arrived on.
    """
    # Parsed once per connection (``ipaddress`` takes microseconds): the
    # recent ones are remembered, short strings only (headers are hostile).
    if len(text) <= _CACHED_LENGTH:
        return _parse_recent(text)
    return _parse(text)


_CACHED_LENGTH = 64


def _parse(text: str) -> IPAddress | None:
    value = text.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:443"
        value = value.split(":", 1)[0]
    value = value.split("%", 1)[0]  # scope id
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_parse_recent = functools.lru_cache(maxsize=4096)(_parse)


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs (``10.0.0.0/8``, ``2001:db8::/32``, or single addresses)."""
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {cidr!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class AddressPolicy:
    """Deny wins over allow; an empty allow list allows every address not denied."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> AddressPolicy:
        return cls(parse_networks(allow), parse_networks(deny))

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, address: IPAddress) -> bool:
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


def forwarded_client(forwarded_for: str | None, trusted_proxies: int) -> IPAddress | None:
    """The client address from ``X-Forwarded-For`` behind ``trusted_proxies`` proxies.

    Each proxy appends the address it received the request from, so with N
    trusted proxies the client is the N-th entry from the right; entries to
    its left were written by the client itself and are not trusted. With
    fewer entries than N, or a malformed entry at that position, the header
    is not trusted at all (None).
    """
    if trusted_proxies < 1 or not forwarded_for:
        return None
    entries = [entry.strip() for entry in forwarded_for.split(",")]
    if len(entries) < trusted_proxies:
        return None
    return parse_address(entries[-trusted_proxies])


def address_key(address: IPAddress) -> str:
    """The unit a per-address limit counts: an IPv4 address, or an IPv6 /64.

    One IPv6 subscriber usually holds a whole /64, so counting single IPv6
    addresses would let one client multiply its allowance by 2^64.
    """
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)
