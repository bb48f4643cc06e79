"""Outbound HTTP to addresses users give us (webhook endpoints, calendar URLs), guarded against SSRF.

A URL names a host; what matters is the address the connection reaches. So `request`:

1. resolves the host itself (the system resolver, or `EGRESS_DNS_SERVERS`), once per request;
2. refuses unless every address it got is allowed: public (`ipaddress`'s `is_global`), or inside
   `EGRESS_ALLOWED_NETWORKS` — loopback, private, link-local (cloud metadata, 169.254.169.254),
   shared and reserved ranges are refused otherwise, IPv4-mapped IPv6 included;
3. connects to that checked address, with the original name in the `Host` header and as the TLS
   server name (certificates are still verified against the name). The host is never resolved a
   second time, so a DNS answer that changes between the check and the connection (rebinding) has
   nothing to change.

Redirects are never followed (a 3xx is returned as it is), proxies from the environment are not
used (they would do their own resolving), the whole exchange is bounded by a timeout, and the
response body is read up to a cap, never further.
"""

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import httpx

from app.config import get_settings
from app.utils.netaddr import dns_server

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048
# Private, loopback and link-local ranges: what development allows by default (EGRESS_ALLOWED_NETWORKS).
LOCAL_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class EgressRefused(Exception):
    """The URL may not be fetched: its scheme, its form, or the address its host resolves to."""


class EgressFailed(Exception):
    """The request was allowed but did not complete: no answer from DNS, no connection, a timeout."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: httpx.Headers
    body: bytes  # at most the cap given to `request`
    truncated: bool  # the body went on past the cap (the rest was never read)
    seconds: float  # from the first DNS query to the last byte read
    address: str  # the address connected to


def check_url(url: str) -> str:
    """The static checks (for input validation): http(s), a host, no credentials in it, bounded,
    and a host given as an IP literal must be one `check_address` lets through.

    Raises `EgressRefused`; where a host name points is checked at each request.
    """
    if len(url) > MAX_URL_LENGTH:
        raise EgressRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressRefused(f"not a valid URL: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise EgressRefused("only http and https URLs are allowed")
    if not parts.hostname:
        raise EgressRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise EgressRefused("credentials do not belong in the URL")
    if port == 0:
        raise EgressRefused("port 0 is not a port")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url
    check_address(address)
    return url


@cache
def _allowed(networks: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def allowed_networks() -> tuple[Network, ...]:
    settings = get_settings()
    configured = settings.egress_allowed_networks
    if configured is None:
        configured = list(LOCAL_NETWORKS) if settings.environment == "development" else []
    return _allowed(tuple(configured))


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def check_address(address: Address) -> None:
    """Refuse an address that is not public, unless `EGRESS_ALLOWED_NETWORKS` lets it through."""
    address = _embedded_ipv4(address)
    if any(address in network for network in allowed_networks() if network.version == address.version):
        return
    if not address.is_global or address.is_multicast:
        raise EgressRefused(f"{address} is not a public address")


async def resolve(host: str, port: int) -> list[Address]:
    """Every address of `host` (an IP literal is its own), without a cache: each request asks anew."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    servers = get_settings().egress_dns_servers
    try:
        if servers:
            return await _ask_servers(host, servers)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, dns.exception.DNSException) as exc:
        raise EgressFailed(f"could not resolve {host}: {exc}") from None
    found = dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos)
    if not found:
        raise EgressFailed(f"{host} has no address")
    return list(found)


async def _ask_servers(host: str, servers: list[str]) -> list[Address]:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*dns_server(server)) for server in servers]
    resolver.lifetime = 5
    answer = await resolver.resolve_name(host, family=socket.AF_UNSPEC)
    return [ipaddress.ip_address(address) for address in dict.fromkeys(answer.addresses())]


def basic_auth(user: str, password: str) -> str:
    """The `Authorization` header value of HTTP Basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@cache
def _tls(ca_file: str | None) -> ssl.SSLContext:
    """Certificates verified against the system's CAs, or only those of `EGRESS_CA_FILE`."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else httpx.create_ssl_context()


async def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    timeout: float | None = None,
    max_bytes: int = 64 * 1024,
) -> Response:
    """One guarded HTTP exchange (see the module's docstring). Raises `EgressRefused` before any
    connection when the URL or its address is not allowed, `EgressFailed` when it does not complete."""
    check_url(url)
    timeout = timeout if timeout is not None else get_settings().egress_timeout_seconds
    target = httpx.URL(url)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            addresses = await resolve(target.host, target.port or (443 if target.scheme == "https" else 80))
            for address in addresses:
                check_address(address)
            return await _exchange(method, target, addresses[0], headers, content, timeout, max_bytes, started)
    except TimeoutError:
        raise EgressFailed(f"no complete answer within {timeout:g} s") from None


async def _exchange(
    method: str,
    target: httpx.URL,
    address: Address,
    headers: Mapping[str, str] | None,
    content: bytes | None,
    timeout: float,
    max_bytes: int,
    started: float,
) -> Response:
    pinned = target.copy_with(host=str(address))
    host_header = target.netloc.decode("ascii")
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    # A client per request: a pooled connection would be keyed by the address alone, whatever the
    # name it was opened (and its certificate checked) for.
    client = httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
        verify=_tls(get_settings().egress_ca_file) if target.scheme == "https" else True,
    )
    try:
        async with client:
            # Identity encoding: the cap counts the bytes as they arrive, and no small body expands.
            fixed = {"Accept-Encoding": "identity", **(headers or {}), "Host": host_header}
            sent = client.build_request(method, pinned, headers=fixed, content=content, extensions=extensions)
            response = await client.send(sent, stream=True)
            try:
                body, truncated = await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
    except httpx.HTTPError as exc:
        raise EgressFailed(f"{type(exc).__name__}: {exc}") from None
    return Response(response.status_code, response.headers, body, truncated, time.monotonic() - started, str(address))


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False
