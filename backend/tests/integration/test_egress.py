"""The SSRF guard on outbound HTTP, against real local servers: a DNS server (dnslib) whose answers
change between lookups, and HTTP servers on different loopback addresses standing for "the allowed
receiver" (127.0.0.2) and "something internal" (127.0.0.1)."""

import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import AAAA, QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

from app.services.integrations import egress
from tests.httpserver import free_port, serve


class ScriptedResolver(BaseResolver):
    """Answers each A query for any name with the next address of a script (the last one repeats)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname)
        if request.q.qtype == QTYPE.A:
            with self._lock:
                self.asked.append(name)
        if request.q.qtype == QTYPE.A and self.answers:
            with self._lock:
                address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        elif request.q.qtype == QTYPE.AAAA and self.answers and ":" in self.answers[0]:
            reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(self.answers[0]), ttl=0))
        return reply


@contextmanager
def dns_server(answers: list[str]) -> Iterator[tuple[ScriptedResolver, int]]:
    resolver = ScriptedResolver(answers)
    port = free_port()
    server = DNSServer(resolver, address="127.0.0.1", port=port, tcp=False)
    server.start_thread()
    try:
        yield resolver, port
    finally:
        server.stop()


async def test_a_private_address_is_refused_before_any_connection(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="")
    with serve() as internal:
        with pytest.raises(egress.EgressRefused, match="not a public address"):
            await egress.request("POST", f"{internal.url}/hook", content=b"{}")
        assert internal.requests == []


async def test_an_allowed_network_is_reached_with_the_name_in_the_host_header(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
    with serve(lambda r: (201, {"X-Seen": r.headers["host"]}, b"made")) as receiver:
        response = await egress.request("POST", f"{receiver.url}/hook", content=b'{"a":1}', headers={"X-A": "1"})
    assert (response.status, response.body, response.truncated) == (201, b"made", False)
    assert response.headers["x-seen"] == f"127.0.0.1:{receiver.port}"
    (seen,) = receiver.requests
    assert (seen.method, seen.path, seen.body, seen.headers["x-a"]) == ("POST", "/hook", b'{"a":1}', "1")


async def test_dns_rebinding_cannot_reach_what_the_check_refused(set_env):
    """The name first resolves to the allowed receiver, then to the internal address. The request
    goes to the address that was checked; the next request sees the new answer and is refused."""
    port = free_port("127.0.0.2")
    with dns_server(["127.0.0.2", "127.0.0.1"]) as (resolver, dns_port):
        set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.2/32", EGRESS_DNS_SERVERS=f"127.0.0.1:{dns_port}")
        with serve(host="127.0.0.2", port=port) as receiver, serve(host="127.0.0.1", port=port) as internal:
            first = await egress.request("GET", f"http://hooks.example.test:{port}/x")
            assert (first.status, first.address) == (200, "127.0.0.2")
            assert [r.headers["host"] for r in receiver.requests] == [f"hooks.example.test:{port}"]
            assert len(resolver.asked) == 1  # resolved once; the connection did not ask again

            with pytest.raises(egress.EgressRefused, match="127.0.0.1 is not a public address"):
                await egress.request("GET", f"http://hooks.example.test:{port}/x")
            assert internal.requests == []
            assert len(receiver.requests) == 1


async def test_redirects_are_returned_not_followed(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
    with serve() as target, serve(lambda r: (302, {"Location": f"{target.url}/secret"}, b"")) as redirecting:
        response = await egress.request("GET", redirecting.url)
    assert response.status == 302
    assert target.requests == []


async def test_the_body_is_read_up_to_the_cap_only(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
    with serve(lambda r: (200, {}, b"x" * 100_000)) as big:
        response = await egress.request("GET", big.url, max_bytes=1000)
    assert (len(response.body), response.truncated) == (1000, True)


async def test_a_slow_answer_is_cut_off_at_the_timeout(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")

    def slow(_):
        time.sleep(2)
        return 200, {}, b"late"

    with serve(slow) as receiver, pytest.raises(egress.EgressFailed, match="within 0.3 s"):
        await egress.request("GET", receiver.url, timeout=0.3)


async def test_a_closed_port_and_a_name_without_address_fail_cleanly(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
    with pytest.raises(egress.EgressFailed, match="ConnectError"):
        await egress.request("GET", f"http://127.0.0.1:{free_port()}/")
    with dns_server([]) as (resolver, dns_port):
        set_env(EGRESS_DNS_SERVERS=f"127.0.0.1:{dns_port}")
        with pytest.raises(egress.EgressFailed, match="could not resolve nowhere.test"):
            await egress.request("GET", "http://nowhere.test/")
    assert resolver.asked == ["nowhere.test."]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http:///nohost",
        "http://user:pw@example.com/",
        "http://example.com:0/",
        "http://example.com:99999/",
        "https://example.com/" + "a" * 2100,
        "file:///etc/passwd",
    ],
)
def test_urls_that_are_never_fetched(url):
    with pytest.raises(egress.EgressRefused):
        egress.check_url(url)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:127.0.0.1",  # IPv4-mapped
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(set_env, address):
    set_env(EGRESS_ALLOWED_NETWORKS="")
    with pytest.raises(egress.EgressRefused):
        egress.check_address(ipaddress.ip_address(address))


def test_public_addresses_pass_and_only_development_allows_local_ones_by_default(set_env, monkeypatch):
    set_env(EGRESS_ALLOWED_NETWORKS="")
    egress.check_address(ipaddress.ip_address("93.184.215.14"))
    egress.check_address(ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c"))
    monkeypatch.delenv("EGRESS_ALLOWED_NETWORKS")
    set_env(ENVIRONMENT="development")
    egress.check_address(ipaddress.ip_address("127.0.0.1"))
    egress.check_address(ipaddress.ip_address("192.168.1.10"))
    with pytest.raises(egress.EgressRefused):
        egress.check_address(ipaddress.ip_address("169.254.169.254"))  # metadata: not even in development
    set_env(ENVIRONMENT="test")
    with pytest.raises(egress.EgressRefused):
        egress.check_address(ipaddress.ip_address("127.0.0.1"))


def test_basic_auth_header():
    assert egress.basic_auth("ann", "p:w") == "Basic YW5uOnA6dw=="


def _certificate(tmp_path, name: str) -> tuple[ssl.SSLContext, str]:
    """A self-signed certificate for `name`: the server's TLS context, and the PEM file to trust it by."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, str(cert_file)


async def test_https_goes_to_the_checked_address_and_verifies_the_name(set_env, tmp_path):
    """The connection is made to the checked IP, yet TLS is spoken to the name: its certificate is
    verified against `hooks.example.test` (SNI), so pinning the address costs no verification."""
    server_tls, trusted = _certificate(tmp_path, "hooks.example.test")
    with dns_server(["127.0.0.2"]) as (_, dns_port), serve(host="127.0.0.2", tls=server_tls) as receiver:
        set_env(
            EGRESS_ALLOWED_NETWORKS="127.0.0.2/32",
            EGRESS_DNS_SERVERS=f"127.0.0.1:{dns_port}",
            EGRESS_CA_FILE=trusted,
        )
        response = await egress.request("GET", f"https://hooks.example.test:{receiver.port}/x")
        assert (response.status, response.address) == (200, "127.0.0.2")
        assert receiver.requests[0].headers["host"] == f"hooks.example.test:{receiver.port}"

        set_env(EGRESS_CA_FILE=_certificate(tmp_path, "other.example.test")[1])  # a CA that did not sign it
        with pytest.raises(egress.EgressFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await egress.request("GET", f"https://hooks.example.test:{receiver.port}/x")
    assert len(receiver.requests) == 1
