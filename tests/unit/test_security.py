"""API keys, rate limits and the URL guard's IPv6 spellings, module by module."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from pathlib import Path

import pytest

from service.ratelimit import (
    MemoryRateLimiter,
    Rate,
    RedisRateLimiter,
    build_rate_limiter,
)
from service.security import ApiKeys, presented_keys
from service.settings import Settings
from service.urlfetch import UrlPolicy
from tests.conftest import free_port


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_keys_in_clear_and_from_a_digest_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team a\n{digest('from-file')}  # rotated 2026-01\n\n")
    keys = ApiKeys.load(["in-clear"], str(keys_file))
    assert keys.identify("in-clear") == digest("in-clear")[:16]
    assert keys.identify("from-file") == digest("from-file")[:16]
    assert keys.identify("wrong") is None
    assert keys.identify("") is None
    assert not ApiKeys.load([], None)


def test_a_key_pasted_into_the_digest_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{digest('ok')}\nsk-live-secret-key\n")
    with pytest.raises(ValueError, match="line 2: not a SHA-256") as caught:
        ApiKeys.load([], str(keys_file))
    assert "sk-live-secret-key" not in str(caught.value)
    with pytest.raises(ValueError, match="Cannot read the API key file"):
        ApiKeys.load([], str(tmp_path / "missing"))


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest is compared with hmac.compare_digest against every key, with no early exit."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    keys = ApiKeys.load(["first", "second", "third"], None)
    assert keys.identify("first") is not None
    assert len(calls) == 3  # the match on the first key did not stop the loop
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests, never the raw key
    calls.clear()
    assert keys.identify("nope") is None
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer abc")], ["abc"]),
        ([(b"Authorization", b"bearer  abc ")], ["abc"]),
        ([(b"x-api-key", b"abc")], ["abc"]),
        ([(b"authorization", b"Basic YTpi"), (b"x-api-key", b"k")], ["k"]),
        ([(b"authorization", b"Bearer ")], []),
        ([], []),
    ],
)
def test_presented_keys(headers: list[tuple[bytes, bytes]], expected: list[str]) -> None:
    assert presented_keys(headers) == expected


@pytest.mark.parametrize(
    ("text", "rate"),
    [("120/minute", Rate(120, 60)), ("5/second", Rate(5, 1)), (" 7 / hour ", Rate(7, 3600))],
)
def test_rate_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["0/minute", "120/day", "minute", "-1/second", "1.5/second"])
def test_rate_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/minute"):
        Rate.parse(text)


def test_settings_refuse_a_malformed_rate_limit() -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        Settings.load(environ={"VISION_API_RATE_LIMIT": "lots"})
    settings = Settings.load(
        environ={"VISION_API_RATE_LIMIT": "120/minute", "VISION_API_API_KEYS": "a, b"}
    )
    assert settings.security.rate_limit == "120/minute"
    assert settings.security.api_keys == ["a", "b"]
    assert settings.limits.max_body_mb == 64


async def test_memory_limiter_counts_per_identity() -> None:
    limiter = MemoryRateLimiter(Rate(2, 3600))
    verdicts = [await limiter.hit("a") for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert 1 <= verdicts[2].retry_after_s <= 3600
    assert (await limiter.hit("b")).allowed


def test_limiter_choice() -> None:
    assert build_rate_limiter(None, None, "p") is None
    assert build_rate_limiter("", "redis://x", "p") is None
    assert isinstance(build_rate_limiter("1/second", None, "p"), MemoryRateLimiter)
    assert isinstance(build_rate_limiter("1/second", "redis://h:1/0", "p"), RedisRateLimiter)


async def test_redis_limiter_fails_open_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the port: every request is let through, one warning is logged."""
    limiter = RedisRateLimiter(Rate(1, 3600), f"redis://127.0.0.1:{free_port()}/0", "t")
    with caplog.at_level(logging.WARNING, logger="service.ratelimit"):
        verdicts = [await limiter.hit("a") for _ in range(3)]
    await limiter.close()
    assert all(v.allowed for v in verdicts)
    warnings = [r for r in caplog.records if "rate limit not enforced" in r.getMessage()]
    assert len(warnings) == 1  # not once per request


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", False),  # 6to4 of 169.254.169.254
        ("2002:808:808::", True),  # 6to4 of 8.8.8.8
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the metadata address
        ("64:ff9b::808:808", True),  # NAT64 of a public address
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::ffff:0:7f00:1", False),  # IPv4-translated
        ("::ffff:a9fe:a9fe", False),  # IPv4-mapped metadata
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("::", False),
    ],
)
def test_ipv6_spellings_of_ipv4_hosts(address: str, allowed: bool) -> None:
    assert UrlPolicy().allows(ipaddress.ip_address(address)) is allowed


def test_allow_list_reaches_through_nat64() -> None:
    policy = UrlPolicy.build(10, 100, 1, ["10.0.0.0/8"])
    assert policy.allows(ipaddress.ip_address("64:ff9b::a00:1"))
