"""No signing key ships with the code; keys come from the environment or files and rotate by `kid`."""

import os
import secrets
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from app.config import Settings
from app.secret_settings import PUBLISHED_KEY_DIGESTS, SECRET_SETTINGS, key_digest
from app.utils.keys import Keyring, key_id, signing_key
from app.utils.security import ACCESS_TOKEN_TYPE, _verified_claims

BACKEND_DIR = Path(__file__).resolve().parents[2]
URLS = {"database_url": "postgresql://db/c3po", "redis_url": "redis://cache/0"}

# Every key that was ever in the source, found with
#   git log -p --all | grep -iE '^[+-].*(secret_key|SECRET_KEY|jwt.encode)'
# (app/config.py's built-in default until this change; tests/conftest.py; bench/users_me.py;
# bench/_stack.py; tests/unit/test_config.py; tests/integration/test_http.py; and the two "other"
# keys tests forged tokens with). Each is public: refused as a key, and a token it signs is refused.
PUBLISHED_KEYS = [
    "change-me-in-production-this-is-only-for-development",
    "test-secret-key-" + "x" * 32,
    "bench-" + "x" * 40,
    "drill-secret-" + "x" * 40,
    "s" * 40,
    "p" * 48,
    "another-secret-of-at-least-32-bytes!!",
    "not our secret key, but just as long as ours",
]


def random_key() -> str:
    return secrets.token_urlsafe(32)


def test_the_published_keys_are_the_ones_refused():
    assert {key_digest(key) for key in PUBLISHED_KEYS} == PUBLISHED_KEY_DIGESTS


class TestNoDefaultKey:
    @pytest.mark.parametrize("environment", ["test", "production"])
    def test_outside_development_a_missing_key_is_refused(self, environment, monkeypatch):
        monkeypatch.delenv("SECRET_KEY")
        with pytest.raises(ValidationError, match="SECRET_KEY is not set") as refused:
            Settings(environment=environment, **URLS)
        assert "SECRET_KEY_FILE" in str(refused.value)

    @pytest.mark.parametrize("key", PUBLISHED_KEYS)
    @pytest.mark.parametrize("environment", ["development", "test", "production"])
    def test_a_published_key_is_refused_everywhere(self, key, environment):
        with pytest.raises(ValidationError, match="published in c3po's source code"):
            Settings(environment=environment, secret_key=key, **URLS)

    @pytest.mark.parametrize("key", PUBLISHED_KEYS)
    def test_a_published_key_may_not_verify_either(self, key):
        with pytest.raises(ValidationError, match="PREVIOUS_SECRET_KEYS: this key was published"):
            Settings(environment="production", secret_key=random_key(), previous_secret_keys=[key], **URLS)

    def test_a_short_key_is_refused(self):
        with pytest.raises(ValidationError, match="32\\+ characters"):
            Settings(environment="production", secret_key="too-short", **URLS)

    def test_development_makes_a_key_once_and_keeps_it(self, tmp_path, monkeypatch):
        monkeypatch.delenv("SECRET_KEY")
        first = Settings(environment="development", data_dir=tmp_path / "data")
        again = Settings(environment="development", data_dir=tmp_path / "data")
        kept = tmp_path / "data" / "secret_key"
        assert first.secret_key == again.secret_key == kept.read_text().strip()
        assert len(first.secret_key) >= 32
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert Settings(environment="development", data_dir=tmp_path / "other").secret_key != first.secret_key
        assert [p.name for p in (tmp_path / "data").iterdir()] == ["secret_key"]  # no drafts left behind

    def test_development_where_no_key_can_be_kept(self, tmp_path, monkeypatch):
        monkeypatch.delenv("SECRET_KEY")
        (tmp_path / "file").write_text("")
        with pytest.raises(ValidationError, match="no development key can be kept"):
            Settings(environment="development", data_dir=tmp_path / "file" / "data")


class TestSecretFiles:
    def test_a_file_secret_is_read(self, tmp_path, monkeypatch):
        key = random_key()
        (tmp_path / "secret_key").write_text(key + "\n")  # as `echo` or a Kubernetes secret leaves it
        (tmp_path / "mail").write_text("smtp password")
        (tmp_path / "db").write_text("postgresql://c3po:pw@db/c3po")
        monkeypatch.delenv("SECRET_KEY")
        monkeypatch.delenv("DATABASE_URL", raising=False)  # set by the harness when an integration test ran first
        monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "secret_key"))
        monkeypatch.setenv("MAIL_PASSWORD_FILE", str(tmp_path / "mail"))
        monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "db"))
        settings = Settings(environment="production", redis_url="redis://cache/0")
        assert (settings.secret_key, settings.mail_password) == (key, "smtp password")
        assert settings.database_url == "postgresql://c3po:pw@db/c3po"

    def test_previous_keys_from_a_file_one_per_line(self, tmp_path, monkeypatch):
        old, older = random_key(), random_key()
        (tmp_path / "previous").write_text(f"{old}\n{older}\n")
        monkeypatch.setenv("PREVIOUS_SECRET_KEYS_FILE", str(tmp_path / "previous"))
        assert Settings(environment="production", **URLS).previous_secret_keys == [old, older]

    def test_no_previous_keys_is_an_empty_file(self, tmp_path, monkeypatch):
        (tmp_path / "previous").write_text("")
        monkeypatch.setenv("PREVIOUS_SECRET_KEYS_FILE", str(tmp_path / "previous"))
        assert Settings(environment="production", **URLS).previous_secret_keys == []

    def test_from_the_dotenv_file(self, tmp_path, monkeypatch):
        key = random_key()
        (tmp_path / "key").write_text(key)
        (tmp_path / ".env").write_text(f"SECRET_KEY_FILE={tmp_path / 'key'}\n")
        monkeypatch.delenv("SECRET_KEY")
        monkeypatch.chdir(tmp_path)
        assert Settings(environment="production", **URLS).secret_key == key

    def test_both_the_value_and_a_file_is_refused(self, tmp_path, monkeypatch):
        (tmp_path / "key").write_text(random_key())
        monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "key"))
        with pytest.raises(SettingsError, match="both SECRET_KEY and SECRET_KEY_FILE"):
            Settings(environment="production", **URLS)

    @pytest.mark.parametrize(("content", "message"), [(None, "cannot read it"), ("\n", "the file is empty")])
    def test_a_missing_or_empty_file_is_refused(self, tmp_path, monkeypatch, content, message):
        if content is not None:
            (tmp_path / "key").write_text(content)
        monkeypatch.delenv("SECRET_KEY")
        monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "key"))
        with pytest.raises(SettingsError, match=f"SECRET_KEY_FILE={tmp_path / 'key'}: {message}"):
            Settings(environment="production", **URLS)

    def test_every_secret_setting_exists(self):
        assert set(SECRET_SETTINGS) <= set(Settings.model_fields)


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["migrate"]])
def test_a_missing_secret_outside_development_stops_start_up_with_a_clear_message(command):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECRET_KEY", "PREVIOUS_SECRET_KEYS"))}
    env |= {"ENVIRONMENT": "production", "DATABASE_URL": "postgresql://db/c3po", "REDIS_URL": "redis://cache/0"}
    done = subprocess.run(
        [sys.executable, "-m", "app", *command], cwd=BACKEND_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("error: SECRET_KEY is not set (ENVIRONMENT=production)"), done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


class TestKeyring:
    """Tokens name their key (`kid`); every listed key verifies, only the current one signs."""

    def claims(self) -> dict:
        return {
            "sub": str(uuid.uuid4()),
            "role": "user",
            "typ": ACCESS_TOKEN_TYPE,
            "jti": uuid.uuid4().hex,
            "sid": uuid.uuid4().hex,
            "iss": "c3po",
            "aud": "c3po-api",
            "iat": 1,
            "nbf": 1,
            "exp": 2**40,
        }

    def sign(self, secret: str, kid: str | None) -> str:
        return jwt.encode(self.claims(), secret, algorithm="HS256", headers={"kid": kid} if kid else None)

    def test_the_kid_names_the_key_without_revealing_it(self):
        key = random_key()
        assert key_id(key) == key_id(key) != key_id(random_key())
        assert key not in key_id(key) and len(key_id(key)) == 16

    def test_a_previous_key_verifies_its_tokens(self):
        old, new = random_key(), random_key()
        ring = Keyring(signing_key(new), (signing_key(old),))
        assert _verified_claims(self.sign(old, key_id(old)), ring, "c3po-api", "c3po").role == "user"
        assert _verified_claims(self.sign(new, key_id(new)), ring, "c3po-api", "c3po").role == "user"

    @pytest.mark.parametrize("kid", ["ours", "theirs", None])
    def test_a_key_not_listed_verifies_nothing(self, kid):
        ours, theirs = random_key(), random_key()
        ring = Keyring(signing_key(ours), ())
        names = {"ours": key_id(ours), "theirs": key_id(theirs), None: None}
        with pytest.raises(jwt.InvalidTokenError):
            _verified_claims(self.sign(theirs, names[kid]), ring, "c3po-api", "c3po")
