"""Address notation shared by settings and the egress guard."""

import ipaddress


def dns_server(text: str) -> tuple[str, int]:
    """`10.0.0.2`, `10.0.0.2:5353`, `[::1]:5353` or `::1` as (address, port); raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        address, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        address, _, port = text.partition(":")
    else:
        address, port = text, ""
    return str(ipaddress.ip_address(address)), int(port or 53)
