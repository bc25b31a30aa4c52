"""Token authentication for private channels: JWT HS256 and ES256 (Sans-I/O).

Public market data needs no login. A private channel (``orders.<USER>``) is open only
to a connection authenticated as USER, by a signed JSON Web Token (RFC 7519) that the
client presents at connect (``Authorization: Bearer <JWT>`` or ``?token=<JWT>``) or in
a ``{"op": "login", "token": "<JWT>"}`` request. The token's claims:

``sub``
    the user id (required): the ``USER`` of ``orders.USER``.
``exp``
    expiry, seconds since the epoch (required): once it passes the gateway closes the
    connection with ``AUTH_EXPIRED`` (4003) unless a later ``login`` refreshed it.
``nbf``, ``iat``
    optional; a token not yet valid (``nbf`` in the future) is refused.

Two algorithms, each enabled by its own key, so that no key can ever verify a token of
the other kind (the classic RS/HS "algorithm confusion" and ``alg: none`` attacks): HS256
with a shared secret of at least 32 bytes (``--jwt-secret`` / ``--jwt-secret-file``),
ES256 with an EC P-256 public key in PEM (``--jwt-public-key``). The ``alg`` header picks
the key; any other ``alg`` is refused before any cryptography runs.

Time is passed in (``now``: seconds since the epoch), no clock is read here. Error
messages never contain the token: tokens are bearer secrets and must not reach logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .exceptions import AuthError, ConfigError
from .protocol import MAX_TOKEN_CHARS, ErrorCode, valid_user

__all__ = [
    "MIN_SECRET_BYTES",
    "Claims",
    "TokenVerifier",
    "make_token",
    "token_from_request",
]

#: Shortest HS256 secret accepted: RFC 7518 §3.2 requires a key of at least the hash
#: size (256 bits); shorter ones can be brute-forced offline from one captured token.
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says.

    Attributes:
        user: the ``sub`` claim, valid as a private channel name.
        expires: the ``exp`` claim, seconds since the epoch.
    """

    user: str
    expires: float


class TokenVerifier:
    """Verifies JWTs against the configured keys.

    Args:
        secret: the HS256 shared secret (at least :data:`MIN_SECRET_BYTES` bytes), or
            None to refuse HS256 tokens.
        public_key: the ES256 public key as PEM bytes, or None to refuse ES256 tokens.
        leeway: seconds of clock skew tolerated on ``exp`` and ``nbf``.

    Raises:
        ConfigError: no key at all, a secret too short, or a public key that is not an
            EC P-256 key in PEM.
    """

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        public_key: bytes | None = None,
        leeway: float = 0.0,
    ) -> None:
        self._keys: dict[str, Any] = {}
        if secret is not None:
            if len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)"
                )
            self._keys["HS256"] = secret
        if public_key is not None:
            try:
                key = load_pem_public_key(public_key)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"--jwt-public-key: not a PEM public key ({exc})") from None
            if not isinstance(key, EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise ConfigError("--jwt-public-key: ES256 needs an EC P-256 public key")
            self._keys["ES256"] = key
        if not self._keys:
            raise ConfigError("a token verifier needs a secret or a public key")
        self.leeway = leeway

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The ``alg`` values this verifier accepts."""
        return tuple(self._keys)

    @classmethod
    def from_options(
        cls,
        *,
        secret: str | None = None,
        secret_file: str | None = None,
        public_key_file: str | None = None,
        leeway: float = 0.0,
    ) -> TokenVerifier | None:
        """Build the verifier ``tickwire serve`` options ask for, or None (no auth).

        Args:
            secret: ``--jwt-secret`` (visible in the process list: prefer the file).
            secret_file: ``--jwt-secret-file``: the secret is the file's content, with
                surrounding whitespace stripped.
            public_key_file: ``--jwt-public-key``: a PEM file.
            leeway: ``--jwt-leeway`` seconds.

        Raises:
            ConfigError: both secret forms given, a file unreadable, or a bad key.
        """
        if secret is not None and secret_file is not None:
            raise ConfigError("give --jwt-secret or --jwt-secret-file, not both")
        key: bytes | None = secret.encode() if secret is not None else None
        pem: bytes | None = None
        try:
            if secret_file is not None:
                with open(secret_file, "rb") as f:
                    key = f.read().strip()
            if public_key_file is not None:
                with open(public_key_file, "rb") as f:
                    pem = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
        if key is None and pem is None:
            return None
        return cls(secret=key, public_key=pem, leeway=leeway)

    def verify(self, token: str, now: float, request_id: int | str | None = None) -> Claims:
        """Check ``token``'s signature and claims at time ``now``.

        Args:
            token: the compact JWT (``header.payload.signature``).
            now: seconds since the epoch (``time.time()`` in the I/O layer).
            request_id: the ``login`` request's id, carried by the error.

        Returns:
            The token's user and expiry.

        Raises:
            AuthError: ``auth_failed`` (too long, malformed, unknown or disabled
                ``alg``, bad signature, missing or invalid ``sub``/``exp``, not yet
                valid) or ``token_expired``.
        """

        import jwt  # PyJWT (and cryptography) cost ~80 ms to import: only with tokens

        def fail(why: str, code: str = ErrorCode.AUTH_FAILED) -> AuthError:
            return AuthError(code, why, request_id)

        if len(token) > MAX_TOKEN_CHARS:
            raise fail("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise fail("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._keys:
            raise fail(f"token algorithm not accepted (accepted: {', '.join(self._keys)})")
        key = self._keys[alg]
        try:
            # Expiry and not-before are checked below against the ``now`` passed in;
            # PyJWT would read the clock itself.
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options={
                    "require": ["exp", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise fail("bad token signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise fail(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise fail("malformed token") from None
        sub, exp, nbf = payload.get("sub"), payload.get("exp"), payload.get("nbf")
        if not isinstance(sub, str) or not valid_user(sub):
            raise fail("token 'sub' is not a valid user id")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise fail("token 'exp' is not a number")
        if nbf is not None and (
            isinstance(nbf, bool) or not isinstance(nbf, int | float) or nbf > now + self.leeway
        ):
            raise fail("token not valid yet ('nbf')")
        if exp <= now - self.leeway:
            raise fail("token expired", ErrorCode.TOKEN_EXPIRED)
        return Claims(sub, float(exp))


def token_from_request(headers: Any, path: bytes | str) -> str | None:
    """Return the token a WebSocket upgrade request carries, or None.

    ``Authorization: Bearer <JWT>`` wins over a ``token`` query parameter (browsers
    cannot set headers on a WebSocket, so they use the query; it ends up in proxy
    access logs, so prefer ``login`` after connecting where that matters).

    Args:
        headers: the request's case-insensitive header mapping.
        path: the request target, e.g. ``b"/ws?token=..."``.
    """
    auth = headers.get("Authorization")
    if isinstance(auth, str):
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    target = path.decode("latin-1") if isinstance(path, bytes) else path
    if "token=" not in target:
        return None
    values = parse_qs(urlsplit(target).query).get("token")
    return values[0] if values else None


def make_token(
    user: str,
    *,
    ttl: float = 3600.0,
    secret: bytes | None = None,
    private_key: Any = None,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a token for ``user`` (``tickwire token``, tests, examples).

    Args:
        user: the ``sub`` claim.
        ttl: seconds until ``exp`` (negative: already expired).
        secret: HS256 secret; or
        private_key: an EC P-256 private key (``cryptography`` object or PEM bytes)
            for ES256.
        now: seconds since the epoch (default: the clock).
        extra: more claims.

    Raises:
        ConfigError: neither or both of ``secret`` and ``private_key``.
    """
    if (secret is None) == (private_key is None):
        raise ConfigError("make_token needs exactly one of secret and private_key")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": int(issued), "exp": int(issued + ttl)}
    claims.update(extra or {})
    import jwt  # see Verifier.verify

    if secret is not None:
        return jwt.encode(claims, secret, algorithm="HS256")
    return jwt.encode(claims, private_key, algorithm="ES256")
