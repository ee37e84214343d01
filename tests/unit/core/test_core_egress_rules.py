"""Which addresses the egress proxy connects to, and the `extensions.allow_private` key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mercury.config import Config, ConfigError, load_config
from mercury.core.egress_rules import (
    address_refusal,
    non_public_kind,
    parse_private_rule,
    parse_private_rules,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "not globally routable"),  # shared address space (CGNAT)
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("fd00::1", "private"),
    ],
)
def test_non_public_kinds(address: str, kind: str | None) -> None:
    assert non_public_kind(ip(address)) == kind


def test_ipv6_forms_that_carry_a_private_ipv4_are_refused() -> None:
    # 6to4 of 127.0.0.1 and 10.0.0.1.
    assert non_public_kind(ip("2002:7f00:1::1")) == "loopback (embedded in 2002:7f00:1::1)"
    assert non_public_kind(ip("2002:a00:1::1")) is not None


def test_allow_private_entries() -> None:
    rules = parse_private_rules(["127.0.0.1:8080", "10.0.0.0/8", "[::1]:9000", "192.168.1.5"])
    assert address_refusal(ip("127.0.0.1"), 8080, rules) is None
    assert address_refusal(ip("127.0.0.1"), 8081, rules) == (
        "127.0.0.1 is not a public address (loopback)"
    )
    assert address_refusal(ip("::ffff:127.0.0.1"), 8080, rules) is None  # the same address
    assert address_refusal(ip("10.200.0.9"), 1, rules) is None
    assert address_refusal(ip("::1"), 9000, rules) is None
    assert address_refusal(ip("::1"), 8080, rules) is not None
    assert address_refusal(ip("192.168.1.5"), 22, rules) is None
    assert address_refusal(ip("192.168.1.6"), 22, rules) is not None
    assert address_refusal(ip("93.184.215.14"), 443) is None  # public needs no rule


@pytest.mark.parametrize(
    "bad", ["", "host.example", "10.0.0.1:0", "10.0.0.1:70000", "[::1", "10.0.0.0/8:80", "::1]"]
)
def test_bad_allow_private_entries_say_what_is_expected(bad: str) -> None:
    with pytest.raises(ValueError, match=r'expected an IP address .* got "'):
        parse_private_rule(bad)


def test_the_config_key_is_checked_naming_it(tmp_path: Path) -> None:
    assert Config.model_validate({"extensions": {"allow_private": ["127.0.0.1:80"]}})
    path = f"{tmp_path}/mercury.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("extensions:\n  allow_private: ['10.0.0.0/8', 'intranet']\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert "extensions.allow_private" in str(exc.value)
    assert '"intranet"' in str(exc.value)
