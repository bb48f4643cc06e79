"""Keys that one step reads or writes together sit in one Redis Cluster hash slot."""

import uuid

from redis.crc import key_slot

from app.services.accounts import tokens


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_a_logins_keys_share_its_familys_slot():
    family = uuid.uuid4().hex
    token, _ = tokens._new_token(family)
    keys = [tokens.family_key(family), tokens._token_key(family, token), tokens.denied_key(family, uuid.uuid4().hex)]
    assert {slot(key) for key in keys} == {slot(family)}


def test_logins_spread_over_the_slots():
    assert len({slot(tokens.family_key(uuid.uuid4().hex)) for _ in range(50)}) > 40
