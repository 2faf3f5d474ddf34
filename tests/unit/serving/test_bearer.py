"""serving.bearer: the one bearer-token rule of the gRPC and REST edges
(``Bearer`` 1*SP token, scheme in any case, the token exactly)."""

from __future__ import annotations

import pytest

from serving.bearer import expected_digest, token_matches

TOKEN = "s3cr3t-T0ken"
EXPECTED = expected_digest(TOKEN)


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("Bearer s3cr3t-T0ken", True),  # one space
        ("Bearer   s3cr3t-T0ken", True),  # several spaces (1*SP)
        ("bearer s3cr3t-T0ken", True),  # the scheme is case-insensitive
        ("BEARER s3cr3t-T0ken", True),
        ("bEaReR  s3cr3t-T0ken", True),
        ("Bearer\ts3cr3t-T0ken", False),  # a tab is not SP
        ("Bearer \ts3cr3t-T0ken", False),
        ("Bearer s3cr3t-T0ken ", False),  # the token exactly: no trailing space
        ("Bearer s3cr3t-t0ken", False),  # the token is case-sensitive
        ("Bearer s3cr3t-T0ke", False),  # a prefix of the token
        ("Bearer s3cr3t-T0kenX", False),
        ("Bearer wrong", False),
        ("Basic s3cr3t-T0ken", False),  # the right token under another scheme
        ("s3cr3t-T0ken", False),  # no scheme
        (" Bearer s3cr3t-T0ken", False),  # leading space: the scheme is then empty
        ("Bearers3cr3t-T0ken", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("", False),
    ],
)
def test_rule(header: str, allowed: bool) -> None:
    assert token_matches(header, EXPECTED) is allowed
    # gRPC metadata arrives as str, HTTP headers as bytes: the same answer.
    assert token_matches(header.encode(), EXPECTED) is allowed


def test_non_ascii_and_undecodable_values_are_refused_not_raised() -> None:
    assert token_matches("Bearer s3cr3t-T0kén", EXPECTED) is False
    assert token_matches("Bearer \ud800", EXPECTED) is False  # lone surrogate in a str
    assert token_matches(b"Bearer \xff\xfe", EXPECTED) is False


def test_expected_digest_refuses_an_empty_token() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        expected_digest("")


def test_the_digest_is_of_the_token_not_the_header() -> None:
    other = expected_digest("another")
    assert other != EXPECTED
    assert token_matches("Bearer another", other)
    assert not token_matches("Bearer s3cr3t-T0ken", other)
