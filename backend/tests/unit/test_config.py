"""Settings: safe production defaults and hand-written lists."""

import secrets

import pytest
from pydantic import ValidationError

from app.config import Settings

URLS = {"database_url": "postgresql://db/c3po", "redis_url": "redis://cache/0"}


def test_production_requires_server_urls():
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(environment="production", secret_key=secrets.token_urlsafe(32), database_url=None, redis_url=None)


def test_production_with_a_real_secret():
    settings = Settings(environment="production", secret_key=secrets.token_urlsafe(32), **URLS)
    assert settings.is_production


def test_retention_days_are_zero_or_more():
    with pytest.raises(ValidationError, match="0 \\(keep for ever\\) or more days"):
        Settings(retention_audit_days=-1)
    assert Settings(retention_audit_days=0).retention_audit_days == 0


@pytest.mark.parametrize("raw", ["https://a.example, https://b.example", '["https://a.example", "https://b.example"]'])
def test_origins_from_csv_or_json(raw, monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", raw)
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]


class TestRedisCluster:
    def test_the_queue_may_not_default_to_a_cluster_node(self):
        with pytest.raises(ValidationError, match="ARQ_REDIS_URL"):
            Settings(redis_url="redis://node-1:6379/0", redis_cluster=True)

    def test_events_and_the_queue_default_to_redis_url(self):
        settings = Settings(redis_url="redis://cache/0")
        assert settings.pubsub_redis_url == settings.queue_redis_url == "redis://cache/0"

    def test_a_cluster_with_its_queue_elsewhere(self):
        settings = Settings(redis_url="redis://node-1:6379", redis_cluster=True, arq_redis_url="redis://queue/0")
        assert (settings.pubsub_redis_url, settings.queue_redis_url) == ("redis://node-1:6379", "redis://queue/0")
