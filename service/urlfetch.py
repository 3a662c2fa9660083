"""Fetching images by URL without becoming a proxy into the server's network.

Every hop is checked the same way: the scheme must be http(s), the host is resolved here, each
resolved address must be public (or inside an operator allow-listed network), and the request
then connects to the checked address itself (Host header and TLS SNI keep the name), so a DNS
answer cannot change between the check and the connection. Redirects are followed by hand and
each target goes through the same check. Size and time are bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from engines.errors import InvalidInputError, PayloadTooLargeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECTS = {301, 302, 303, 307, 308}
# IPv6 ranges that carry an IPv4 address to an IPv4 host: NAT64's well-known prefix (RFC 6052),
# IPv4-compatible (deprecated) and IPv4-translated (SIIT) addresses. Python calls most of them
# global, yet 64:ff9b::a00:1 reaches 10.0.0.1 through a NAT64 gateway (IPv6-only clusters).
EMBEDS_IPV4 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
)
# RFC 8215's local-use NAT64 prefix: the operator chooses where the IPv4 address sits, so it
# cannot be read back; refused unless allow-listed.
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


@dataclass(frozen=True)
class UrlPolicy:
    """Limits of URL fetching.

    Attributes:
        timeout_s: Deadline for the whole fetch, redirects included.
        max_bytes: Largest body accepted.
        max_redirects: Most redirects followed.
        allowed_networks: Networks allowed even though they are private (operator's choice).
    """

    timeout_s: float = 10.0
    max_bytes: int = 25 * 2**20
    max_redirects: int = 3
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(
        cls, timeout_s: float, max_bytes: int, max_redirects: int, networks: Sequence[str]
    ) -> UrlPolicy:
        """Parse CIDR strings into networks.

        Raises:
            ValueError: A network is not valid CIDR.
        """
        parsed = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip())
        return cls(timeout_s, max_bytes, max_redirects, parsed)

    def allows(self, address: IPAddress) -> bool:
        """Whether connecting to ``address`` is permitted.

        An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64, ...) is judged by the
        IPv4 host it reaches.
        """
        if any(address in net for net in self.allowed_networks):
            return True
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                return self.allows(embedded)
            if address in NAT64_LOCAL:
                return False
        return address.is_global and not address.is_multicast


class UrlFetcher:
    """Fetches image bytes under a :class:`UrlPolicy`."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    async def fetch(self, url: str) -> bytes:
        """Return the body at ``url``.

        Raises:
            InvalidInputError: Refused URL, unreachable host, HTTP error or timeout.
            PayloadTooLargeError: The body is over the byte limit.
        """
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise InvalidInputError(
                f"Fetching {url} took longer than {self.policy.timeout_s:g} s."
            ) from None

    async def _fetch(self, url: str) -> bytes:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            current = _parse(url)
            for _ in range(self.policy.max_redirects + 1):
                address = await self._checked_address(current)
                request = _pinned_request(client, current, address)
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise InvalidInputError(
                        f"Could not fetch {current}: {type(exc).__name__}."
                    ) from None
                try:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        current = _parse(str(current.join(response.headers["location"])))
                        continue
                    if response.status_code >= 400:
                        raise InvalidInputError(
                            f"Fetching {current} failed with HTTP {response.status_code}."
                        )
                    return await self._read_limited(response, current)
                finally:
                    await response.aclose()
            raise InvalidInputError(
                f"Too many redirects fetching {url} (at most {self.policy.max_redirects})."
            )

    async def _checked_address(self, url: httpx.URL) -> IPAddress:
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError:
                raise InvalidInputError(f"Cannot resolve host {host!r} of {url}.") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        refused = [a for a in addresses if not self.policy.allows(a)]
        if refused or not addresses:
            raise InvalidInputError(
                f"URL {url} is refused: {host} resolves to {refused[0] if refused else 'nothing'}, "
                "a private, loopback, link-local or reserved address. An operator can allow "
                "networks with VISION_API_URL_ALLOWED_NETWORKS."
            )
        return addresses[0]

    async def _read_limited(self, response: httpx.Response, url: httpx.URL) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise PayloadTooLargeError(self._too_large(url))
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise PayloadTooLargeError(self._too_large(url))
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: httpx.URL) -> str:
        return f"Image at {url} is larger than {self.policy.max_bytes} bytes."


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address reaches, if it embeds one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in EMBEDS_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidInputError(f"Invalid URL {url!r}.") from None
    if parsed.scheme not in ("http", "https"):
        raise InvalidInputError(f"URL scheme {parsed.scheme!r} is not allowed; use http or https.")
    if not parsed.host:
        raise InvalidInputError(f"URL {url!r} has no host.")
    return parsed


def _pinned_request(client: httpx.AsyncClient, url: httpx.URL, address: IPAddress) -> httpx.Request:
    """A request to ``url`` that connects to ``address`` while keeping the name for Host/SNI."""
    ip_host = f"[{address}]" if address.version == 6 else str(address)
    host_header = url.host if url.port is None else f"{url.host}:{url.port}"
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        "GET",
        url.copy_with(host=ip_host.strip("[]")),
        headers={"Host": host_header, "Accept": "image/*"},
        extensions=extensions,
    )
