"""The access-token issuer: what it accepts, and that its verified-token cache changes nothing."""

from __future__ import annotations

import time

import pytest

from gateway.auth import TokenIssuer
from protocol.errors import BadSignature, SignatureExpired

SECRET = b"s" * 32


def test_a_token_verifies_once_and_again_from_the_cache() -> None:
    issuer = TokenIssuer(SECRET)
    token, _ = issuer.issue("u-1", "admin")
    first = issuer.verify(token)
    assert (first.user_id, first.role) == ("u-1", "admin")
    assert issuer.verify(token) == first
    assert token in issuer._verified


def test_tampered_tokens_are_refused_even_next_to_a_cached_one() -> None:
    issuer = TokenIssuer(SECRET)
    token, _ = issuer.issue("u-1", "user")
    issuer.verify(token)
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    for bad in (f"{head}.{body}.{flipped}", f"{head}.{body}.", token + "x", token[:-1]):
        with pytest.raises(BadSignature):
            issuer.verify(bad)
        assert bad not in issuer._verified
    with pytest.raises(BadSignature):  # another key never shares the cache
        TokenIssuer(b"t" * 32).verify(token)


def test_a_cached_token_still_expires() -> None:
    issuer = TokenIssuer(SECRET, ttl_s=1)
    token, expires = issuer.issue("u-1", "user")
    issuer.verify(token)
    time.sleep(max(0.0, expires - time.time()) + 0.05)  # past exp: the cache must say so too
    with pytest.raises(SignatureExpired):
        issuer.verify(token)
    assert token not in issuer._verified
    with pytest.raises(SignatureExpired):  # and the full check agrees afterwards
        issuer.verify(token)


def test_the_cache_is_bounded() -> None:
    issuer = TokenIssuer(SECRET)
    issuer.VERIFIED_CACHE = 5
    tokens = [issuer.issue(f"u-{i}", "user")[0] for i in range(20)]
    for token in tokens:
        issuer.verify(token)
    assert len(issuer._verified) == 5
    assert list(issuer._verified) == tokens[-5:]
    assert issuer.verify(tokens[0]).user_id == "u-0"  # evicted means checked again, not refused
