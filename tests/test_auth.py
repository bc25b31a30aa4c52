"""Token verification (Sans-I/O): HS256 and ES256, expiry with time passed in, refusals.

Every refusal is an :class:`AuthError` with a documented code, and no error message ever
contains the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tickwire.auth import MIN_SECRET_BYTES, Claims, TokenVerifier, make_token, token_from_request
from tickwire.exceptions import AuthError, ConfigError
from tickwire.protocol import ErrorCode

SECRET = b"k" * MIN_SECRET_BYTES
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def es_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _refused(verifier: TokenVerifier, token: str, now: float = NOW) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, now, request_id=7)
    err = info.value
    assert err.request_id == 7
    # Tokens are bearer secrets: never in a message that may reach a log or a client.
    for secret in (token, token.split(".")[-1]):
        assert len(secret) < 8 or secret not in err.message
    return err


def test_hs256_round_trip() -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = make_token("alice", ttl=60, secret=SECRET, now=NOW)
    assert verifier.verify(token, NOW + 59) == Claims("alice", NOW + 60)
    assert verifier.algorithms == ("HS256",)


def test_es256_round_trip(es_key: ec.EllipticCurvePrivateKey) -> None:
    verifier = TokenVerifier(public_key=_pem(es_key))
    token = make_token("bob@example.com", ttl=10, private_key=es_key, now=NOW)
    assert verifier.verify(token, NOW).user == "bob@example.com"


def test_expiry_is_checked_against_the_time_passed_in() -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = make_token("alice", ttl=60, secret=SECRET, now=NOW)
    assert _refused(verifier, token, NOW + 60).code == ErrorCode.TOKEN_EXPIRED
    # Leeway tolerates clock skew.
    assert TokenVerifier(secret=SECRET, leeway=5).verify(token, NOW + 62).user == "alice"


def test_wrong_secret_and_tampered_payload_are_refused() -> None:
    verifier = TokenVerifier(secret=SECRET)
    other = make_token("alice", secret=b"x" * 32, now=NOW)
    assert "signature" in _refused(verifier, other).message
    head, payload, sig = make_token("alice", secret=SECRET, now=NOW).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _refused(verifier, f"{head}.{forged}.{sig}").code == ErrorCode.AUTH_FAILED


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "alice", "exp": NOW + 60}, None, algorithm="none")
    err = _refused(TokenVerifier(secret=SECRET), token)
    assert err.code == ErrorCode.AUTH_FAILED and "algorithm" in err.message


def test_algorithm_confusion_is_refused(es_key: ec.EllipticCurvePrivateKey) -> None:
    # The classic attack: an HS256 token "signed" with the server's *public* key.
    pem = _pem(es_key)
    verifier = TokenVerifier(public_key=pem)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(b'{"sub":"alice","exp":2e9}')
    mac = hmac.new(pem, signing.encode(), hashlib.sha256).digest()
    forged = f"{signing}.{b64(mac)}"
    assert _refused(verifier, forged).code == ErrorCode.AUTH_FAILED
    # And an ES256 token is refused by a secret-only verifier.
    es = make_token("alice", private_key=es_key, now=NOW)
    assert _refused(TokenVerifier(secret=SECRET), es).code == ErrorCode.AUTH_FAILED


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": NOW + 60}, "'sub'"),
        ({"sub": "alice"}, "'exp'"),
        ({"sub": 5, "exp": NOW + 60}, "malformed"),  # PyJWT: sub must be a string
        ({"sub": "al ice", "exp": NOW + 60}, "user id"),
        ({"sub": "-alice", "exp": NOW + 60}, "user id"),
        ({"sub": "alice", "exp": "soon"}, "'exp'"),
        ({"sub": "alice", "exp": NOW + 60, "nbf": NOW + 30}, "nbf"),
    ],
)
def test_bad_claims_are_refused(claims: dict[str, object], why: str) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    err = _refused(TokenVerifier(secret=SECRET), token)
    assert err.code == ErrorCode.AUTH_FAILED and why in err.message


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000, "...", "e30.e30.e30"])
def test_garbage_is_refused(token: str) -> None:
    assert _refused(TokenVerifier(secret=SECRET), token).code == ErrorCode.AUTH_FAILED


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        TokenVerifier(secret=b"short")
    with pytest.raises(ConfigError):
        TokenVerifier()
    with pytest.raises(ConfigError, match="PEM"):
        TokenVerifier(public_key=b"not a key")
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="P-256"):
        TokenVerifier(public_key=rsa_pem)
    assert TokenVerifier.from_options() is None
    with pytest.raises(ConfigError, match="not both"):
        TokenVerifier.from_options(secret="a" * 32, secret_file="x")
    with pytest.raises(ConfigError, match="cannot read"):
        TokenVerifier.from_options(secret_file=str(tmp_path / "missing"))
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    verifier = TokenVerifier.from_options(secret_file=str(secret_file))
    assert verifier is not None
    assert verifier.verify(make_token("a", secret=SECRET, now=NOW), NOW).user == "a"
    with pytest.raises(ConfigError):
        make_token("a")


def test_token_from_request() -> None:
    assert token_from_request({"Authorization": "Bearer abc.def.ghi"}, b"/ws") == "abc.def.ghi"
    assert token_from_request({"Authorization": "bearer  t "}, b"/ws") == "t"
    assert token_from_request({"Authorization": "Basic dXNlcg=="}, b"/ws") is None
    assert token_from_request({}, b"/ws?token=q.r.s&x=1") == "q.r.s"
    assert token_from_request({}, "/ws?x=1") is None
    assert token_from_request({}, b"/ws?token=") is None
    # The header wins over the query.
    assert token_from_request({"Authorization": "Bearer h"}, b"/ws?token=q") == "h"
