"""The common-password policy."""

import pytest

from app.errors import WeakPassword
from app.services.accounts.passwords import common_passwords, ensure_strong


def test_the_list_is_large_and_ships_with_the_code():
    passwords = common_passwords()
    assert len(passwords) >= 10_000
    assert all(len(p) >= 8 for p in passwords)


@pytest.mark.parametrize("password", ["password", "PASSWORD", "Sunshine", "iloveyou", "1qaz2wsx"])
def test_common_passwords_are_refused_whatever_the_case(password):
    with pytest.raises(WeakPassword) as error:
        ensure_strong(password)
    assert (error.value.status, error.value.code) == (422, "weak_password")


@pytest.mark.parametrize("password", ["plum tree under a violet moon", "пароль с пробелами", "x7#kQ2!m"])
def test_uncommon_passwords_pass(password):
    ensure_strong(password)
