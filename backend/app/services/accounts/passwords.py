"""Password policy: 8–128 characters of anything (checked by the schemas), never a common one."""

from functools import lru_cache
from pathlib import Path

from app.errors import WeakPassword

_LIST = Path(__file__).resolve().parents[2] / "data" / "common-passwords.txt"


@lru_cache
def common_passwords() -> frozenset[str]:
    lines = _LIST.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def ensure_strong(password: str) -> None:
    if password.lower() in common_passwords():
        raise WeakPassword("This password is among the most commonly used ones; choose another")
