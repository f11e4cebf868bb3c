"""`REDIS_URL` naming Sentinels (issue 20): parsed into hosts, service and db, refused with a reason that never quotes
the password, and redacted whole; the Sentinels' own password is masked like the Redis password."""

from __future__ import annotations

import pytest

from config.settings import load_settings, sentinel_parts
from worker import redact
from worker.errors import ConfigError


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_db() -> None:
    settings = load_settings(redis_url="redis+sentinel://:s3cret-pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/cekura/3")
    parts = sentinel_parts(settings.redis_url.get_secret_value())
    assert parts.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (parts.service, parts.db, parts.password, parts.tls) == ("cekura", 3, "s3cret-pw", False)
    assert settings.redis_url_redacted == "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2,[::1]:26380/cekura/3"
    assert sentinel_parts("rediss+sentinel://h/cekura").tls


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis+sentinel://:s3cret-pw@h:port/cekura", "malformed host or port"),
        ("redis+sentinel://:s3cret-pw@h:26379", "must name the Sentinel service"),
        ("redis+sentinel://:s3cret-pw@h:26379/cekura/zero", "must name the Sentinel service"),
        ("redis+sentinel://:s3cret-pw@h:99999/cekura", "malformed host or port"),
        ("redis+sentinel://:s3cret-pw@,h/cekura", "malformed host or port"),
        ("sentinel://:s3cret-pw@h/cekura", "redis+sentinel://"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_quoting_it(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(redis_url=url)
    assert words in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)


def test_the_sentinel_password_is_masked_and_a_short_one_refused() -> None:
    settings = load_settings(redis_url="redis+sentinel://h/cekura", redis_sentinel_password="sentinel-pass-1")
    redact.register_settings(settings)
    assert redact.redact("AUTH sentinel-pass-1 failed") == "AUTH *** failed"
    with pytest.raises(ConfigError, match="REDIS_SENTINEL_PASSWORD"):
        load_settings(redis_url="redis+sentinel://h/cekura", redis_sentinel_password="abc")
