"""Password hashing and access tokens, without servers."""

import time
import uuid
from datetime import UTC, datetime

import jwt
import pytest
from pwdlib.hashers.bcrypt import BcryptHasher

from app.config import get_settings
from app.utils.keys import keyring
from app.utils.security import (
    create_access_token,
    decode_access_token,
    hash_password,
    random_token,
    token_digest,
    verify_password,
)

PASSWORD = "plum tree under a violet moon"


class TestPasswordHashing:
    async def test_argon2id_round_trip(self):
        hashed = await hash_password(PASSWORD)

        assert hashed.startswith("$argon2id$")
        assert PASSWORD not in hashed
        assert await verify_password(PASSWORD, hashed) == (True, None)
        assert await verify_password(PASSWORD + " ", hashed) == (False, None)

    async def test_same_password_hashes_differently(self):
        assert await hash_password(PASSWORD) != await hash_password(PASSWORD)

    async def test_bcrypt_is_verified_and_upgraded(self):
        legacy = BcryptHasher(rounds=4).hash(PASSWORD)

        valid, upgraded = await verify_password(PASSWORD, legacy)

        assert valid and upgraded is not None and upgraded.startswith("$argon2id$")
        assert await verify_password(PASSWORD, upgraded) == (True, None)

    async def test_wrong_password_against_bcrypt(self):
        assert await verify_password("something else", BcryptHasher(rounds=4).hash(PASSWORD)) == (False, None)

    async def test_password_past_72_bytes_is_not_its_prefix(self):
        prefix = "p" * 72
        password = prefix + "q" * 28
        hashed = await hash_password(password)

        assert (await verify_password(prefix, hashed))[0] is False
        assert (await verify_password(password, hashed))[0] is True

    async def test_long_password_never_matches_a_bcrypt_hash_of_its_prefix(self):
        # bcrypt silently uses only 72 bytes; a longer password must not slip in through a legacy hash.
        prefix = "p" * 72
        legacy = BcryptHasher(rounds=4).hash(prefix)
        assert await verify_password(prefix + "q" * 28, legacy) == (False, None)

    async def test_unicode_is_hashed_as_is(self):
        hashed = await hash_password("пароль с пробелами ✓")
        assert (await verify_password("пароль с пробелами ✓", hashed))[0]
        assert not (await verify_password("пароль с пробелами", hashed))[0]


class TestOpaqueTokens:
    def test_random_tokens_are_long_and_unique(self):
        tokens = {random_token() for _ in range(100)}
        assert len(tokens) == 100
        assert all(len(t) >= 43 for t in tokens)

    def test_digest_is_sha256_hex(self):
        digest = token_digest("abc")
        assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


class TestAccessTokens:
    def test_round_trip(self):
        user_id = uuid.uuid4()
        token, lifetime = create_access_token(user_id, "staff", session_id="family-1")

        claims = decode_access_token(token)

        assert lifetime == 15 * 60
        assert (claims.user_id, claims.role, claims.session_id) == (user_id, "staff", "family-1")
        assert claims.expires_at - claims.issued_at == pytest.approx(lifetime, abs=1)
        raw = jwt.decode(token, options={"verify_signature": False})
        assert raw.keys() >= {"sub", "exp", "iat", "nbf", "jti", "role", "iss", "aud", "typ"}
        assert jwt.get_unverified_header(token)["alg"] == "HS256"

    def test_each_token_has_its_own_jti(self):
        user_id = uuid.uuid4()
        first = decode_access_token(create_access_token(user_id, "user", session_id="f")[0])
        second = decode_access_token(create_access_token(user_id, "user", session_id="f")[0])
        assert first.jti != second.jti

    @pytest.mark.parametrize(
        "changes",
        [
            {"aud": "other"},
            {"iss": "other"},
            {"typ": "refresh"},
            {"exp": -1},  # seconds from now
            {"nbf": 300},
            {"sub": "not-a-uuid"},
        ],
    )
    def test_bad_claims_are_refused(self, changes):
        token, _ = create_access_token(uuid.uuid4(), "user", session_id="f")
        now = int(time.time())
        changes = {k: now + v if k in ("exp", "nbf") else v for k, v in changes.items()}
        claims = {**jwt.decode(token, options={"verify_signature": False}), **changes}
        forged = jwt.encode(claims, keyring().current.secret, algorithm="HS256", headers={"kid": keyring().current.kid})
        with pytest.raises(jwt.InvalidTokenError):
            decode_access_token(forged)

    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    def test_only_hs256_is_accepted(self):
        token, _ = create_access_token(uuid.uuid4(), "user", session_id="f")
        claims = jwt.decode(token, options={"verify_signature": False})
        with pytest.raises(jwt.InvalidTokenError):
            decode_access_token(jwt.encode(claims, keyring().current.secret, algorithm="HS512"))
        header, payload, _ = token.split(".")
        unsigned = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode() + f".{payload}."
        with pytest.raises(jwt.InvalidTokenError):
            decode_access_token(unsigned)


class TestVerifiedTokensAreRemembered:
    """A token's signature is checked once per process; its expiry on every use."""

    def test_a_remembered_token_still_expires(self):
        lifetime = get_settings().access_token_expire_minutes * 60
        issued = datetime.fromtimestamp(time.time() - lifetime + 1, UTC)  # expires within a second
        token, _ = create_access_token(uuid.uuid4(), "user", session_id="f" * 32, now=issued)
        claims = decode_access_token(token)
        assert decode_access_token(token) == claims  # remembered

        time.sleep(max(0.0, claims.expires_at - time.time()) + 0.05)

        with pytest.raises(jwt.ExpiredSignatureError):
            decode_access_token(token)

    def test_a_forged_token_is_refused_every_time(self):
        token, _ = create_access_token(uuid.uuid4(), "user", session_id="f" * 32)
        claims = jwt.decode(token, options={"verify_signature": False})
        header = {"kid": keyring().current.kid}  # names our key, but signed with another
        forged = jwt.encode(claims, "not our secret key, but just as long as ours", algorithm="HS256", headers=header)
        for _ in range(2):
            with pytest.raises(jwt.InvalidSignatureError):
                decode_access_token(forged)
