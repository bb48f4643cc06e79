"""Where secret settings come from and which signing keys are refused (used by `app.config`).

Every secret setting may be read from a file named by `<NAME>_FILE` (Docker and Kubernetes secrets);
development makes a signing key of its own; a key ever published in this repository is refused.
"""

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsError

MIN_SECRET_KEY_LENGTH = 32
DEVELOPMENT_KEY_FILE = "secret_key"  # under DATA_DIR: the key `dev` makes once and keeps
# Every setting that holds a secret; each may also be read from a file named by `<NAME>_FILE`
# (Docker and Kubernetes secrets). Add a new secret setting here.
SECRET_SETTINGS = (
    "secret_key",
    "previous_secret_keys",
    "database_url",
    "redis_url",
    "redis_pubsub_url",
    "arq_redis_url",
    "mail_password",
    "sentry_dsn",
)
_MAY_BE_EMPTY = {"previous_secret_keys"}  # no key rotated out: an empty list
# SHA-256 of every signing key that ever appeared in this repository (the old built-in default, the
# tests', the benchmarks'): they are public, so they are refused as keys in every environment.
# `tests/unit/test_signing_keys.py` holds the keys themselves and how they were found.
PUBLISHED_KEY_DIGESTS = frozenset(
    {
        "53a4480fba29cff72f8261d5511363accf32cd00d61be85e7e7d28beae29453c",
        "be337cce79665190d12a4b76c639e3007d5d917affbaf96144608deb61d035f1",
        "2909d7306910ab0238df43312d42c8f0f20a30d8bef31385bd104e9fb43ec0df",
        "95c33d621c9e41ec051df6289afc19a344020f9798548f898ff9b61380b29744",
        "3923fb8348df77529b04f6f536b8204856d0501d031063de795c57ad693b288f",
        "d64bf41c3707355caffbdcc2700d904c6f77edf4136ccab5b9104097d3d8fc6d",
        "9916baf5dd6578cfe1d4caf271d7afb5b1f2e4bec808ec31babbc8eb97e26020",
        "ec1177e5df99e1e8bd6674bf8e3e93187da8dd4e107b3d262787b310a2036b4c",
    }
)


def read_secret_file(path: str, variable: str, *, may_be_empty: bool = False) -> str:
    """A secret's value from a file (surrounding whitespace and the final newline dropped)."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{variable}={path}: cannot read it ({exc.strerror or exc})") from None
    if not value and not may_be_empty:
        raise SettingsError(f"{variable}={path}: the file is empty")
    return value


class SecretFiles(PydanticBaseSettingsSource):
    """`<NAME>_FILE=/run/secrets/name`: the secret setting NAME read from that file, from the
    environment or `.env` alike. Setting both NAME and NAME_FILE is refused (which one is meant?)."""

    def __init__(self, settings_cls: type[BaseSettings], *sources: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self._sources = sources

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SECRET_SETTINGS:
            path = next((s.env_vars[f"{name}_file"] for s in self._sources if s.env_vars.get(f"{name}_file")), None)
            if path is None:
                continue
            variable = f"{name.upper()}_FILE"
            if any(s.env_vars.get(name) for s in self._sources):
                raise SettingsError(f"both {name.upper()} and {variable} are set: keep one")
            values[name] = read_secret_file(path, variable, may_be_empty=name in _MAY_BE_EMPTY)
        return values


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def development_key(data_dir: Path) -> str:
    """The signing key of a development machine: random, made once and kept in `DATA_DIR/secret_key`
    (readable by its owner only), so sign-ins outlive a restart of `dev`. Two processes starting at
    once (`dev`'s API and worker) agree: the file appears whole or not at all (a hard link)."""
    path = data_dir / DEVELOPMENT_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{DEVELOPMENT_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            draft.unlink()
    return read_secret_file(str(path), str(path))
