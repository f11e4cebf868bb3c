"""Settings: read from the environment, validated, and a bad value stops start-up naming the variable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from config.settings import Settings, get_settings, load_settings, redact_url
from worker.cli import EXIT_USAGE, main
from worker.errors import ConfigError


@pytest.fixture(autouse=True)
def fresh_settings_cache() -> Iterator[None]:
    """`get_settings()` is cached per process: clear it around each test so environment changes are seen."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


#: (environment variable, bad value)
BAD_VALUES = [
    ("CEKURA_POLL_FACTOR", "0.5"),
    ("CEKURA_POLL_FACTOR", "fast"),
    ("CEKURA_POLL_FACTOR", "11"),
    ("CEKURA_POLL_INITIAL_S", "0"),
    ("CEKURA_POLL_MAX_S", "-1"),
    ("CEKURA_POLL_JITTER", "1.0"),
    ("CEKURA_RETRY_INITIAL_S", "0"),
    ("CEKURA_MAX_CONSECUTIVE_ERRORS", "0"),
    ("CEKURA_HTTP_TIMEOUT_S", "500"),
    ("CEKURA_API_URL", "ftp://api.cekura.ai"),
    ("CEKURA_API_URL", "https://api.cekura.ai/?debug=1"),
    ("CEKURA_API_URL", "not a url"),
    ("REDIS_URL", "http://localhost:6379/0"),
    ("CEKURA_QUEUE", "bad queue!"),
    ("CEKURA_KEY_PREFIX", ""),
    ("CEKURA_REQUEST_MAX_BYTES", "10"),
    ("CEKURA_RESULTS_MAXLEN", "5"),
    ("CEKURA_JOB_TTL_S", "1"),
    ("CEKURA_PROCESSES", "0"),
    ("CEKURA_THREADS", "many"),
    ("CEKURA_METRICS_PORT", "70000"),
    ("CEKURA_PROGRESS_EVENTS", "sometimes"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_environment_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}:" in message
    assert message.startswith("invalid setting ")


def test_a_bad_keyword_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"CEKURA_POLL_FACTOR: Input should be greater than or equal to 1"):
        load_settings(cekura_poll_factor=0.5)


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEKURA_POLL_FACTOR", "0")
    monkeypatch.setenv("CEKURA_THREADS", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "CEKURA_POLL_FACTOR:" in str(caught.value)
    assert "CEKURA_THREADS:" in str(caught.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CEKURA_POLL_INITIAL_S": "10", "CEKURA_POLL_MAX_S": "5"}, "cekura_poll_max_s"),
        ({"CEKURA_JOB_DEADLINE_S": "100", "CEKURA_JOB_DEADLINE_MAX_S": "50"}, "cekura_job_deadline_s"),
    ],
)
def test_settings_that_contradict_each_other_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value).lower()


def test_a_bad_setting_in_the_environment_fails_get_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEKURA_POLL_FACTOR", "0.1")
    with pytest.raises(ConfigError, match="CEKURA_POLL_FACTOR"):
        get_settings()


def test_a_bad_setting_stops_the_run_command_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CEKURA_POLL_FACTOR", "0.5")
    assert main(["run", "--processes", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("cekura-worker: invalid setting ")
    assert "CEKURA_POLL_FACTOR" in err


def test_a_config_error_never_quotes_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2-secret@redis.internal:6379/0")
    monkeypatch.setenv("CEKURA_API_URL", "https://user:api-pass-xyz@api.cekura.ai")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "REDIS_URL" in message
    assert "CEKURA_API_URL" in message
    assert "hunter2-secret" not in message
    assert "api-pass-xyz" not in message


def test_environment_values_are_read_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEKURA_POLL_FACTOR", "2")
    monkeypatch.setenv("CEKURA_PROGRESS_EVENTS", "true")
    monkeypatch.setenv("CEKURA_METRICS_PORT", "9100")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("CEKURA_API_KEY", "env-key-123")
    monkeypatch.setenv("CEKURA_API_URL", "https://api.example.test/")
    s = load_settings()
    assert s.cekura_poll_factor == 2.0
    assert s.cekura_progress_events is True
    assert s.cekura_metrics_port == 9100
    assert s.log_level == "DEBUG"
    assert s.cekura_api_key is not None
    assert s.cekura_api_key.get_secret_value() == "env-key-123"
    assert "env-key-123" not in repr(s)
    assert s.cekura_api_url == "https://api.example.test"  # trailing slash dropped


def test_keyword_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEKURA_POLL_FACTOR", "3")
    assert load_settings(cekura_poll_factor=1.25).cekura_poll_factor == 1.25


def test_defaults_are_valid_and_safe_for_development(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CEKURA_API_KEY", "REDIS_URL", "CEKURA_POLL_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.cekura_api_key is None  # no default for the secret
    assert s.cekura_poll_initial_s <= s.cekura_poll_max_s
    assert s.cekura_request_max_bytes == 131_072
    assert s.cekura_progress_events is False


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception, match="frozen"):
        s.cekura_poll_factor = 2.0  # type: ignore[misc]


def test_keys_live_under_the_prefix() -> None:
    s = load_settings(cekura_key_prefix="acme-prod")
    assert s.key("job", "j1") == "acme-prod:job:j1"
    assert s.key("schedule") == "acme-prod:schedule"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis.internal:6380/2", "redis://:***@redis.internal:6380/2"),
        ("rediss://app:s3cret@redis.internal/0", "rediss://app:***@redis.internal/0"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_the_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert Settings(redis_url=url).redis_url_redacted == shown  # type: ignore[arg-type]


def test_the_api_key_loses_the_newline_a_secret_file_leaves_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEKURA_API_KEY", "  sk-from-a-file-123\n")
    s = load_settings()
    assert s.cekura_api_key is not None
    assert s.cekura_api_key.get_secret_value() == "sk-from-a-file-123"


@pytest.mark.parametrize(
    "key",
    ["sk-inner\nnewline-1", "sk-\x00nul-byte-22", "sk-escape\x1b[0m-3", "sk-del\x7f-4444", "sk-caf\u00e9-5", "\n \t"],
)
def test_an_api_key_with_control_or_non_ascii_characters_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(cekura_api_key=key)
    message = str(caught.value)
    assert "CEKURA_API_KEY:" in message
    for part in ("sk-", "inner", "nul-byte", "escape", "del", "caf"):
        assert part not in message


def test_an_api_key_refused_in_the_environment_is_not_shown_by_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CEKURA_API_KEY", "sk-tab\tinside-9876")
    assert main(["run", "--processes", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "CEKURA_API_KEY" in err
    assert "9876" not in err


def test_a_settings_validation_error_never_quotes_its_input() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(cekura_api_key="sk-bell\x07-4321")  # type: ignore[arg-type]
    assert "4321" not in str(caught.value)
    assert "4321" not in repr(caught.value)


def test_the_redis_url_loses_surrounding_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw-from-file@redis.internal:6379/0\n")
    assert load_settings().redis_url.get_secret_value() == "redis://:pw-from-file@redis.internal:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw\nsecret-77@redis.internal/0",
        "redis://:pw\tsecret-77@redis.internal/0",
        "redis://:pw%0Asecret-77@r/0",
    ],
)
def test_a_redis_url_with_a_control_character_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url=url)
    message = str(caught.value)
    assert "REDIS_URL:" in message
    assert "secret-77" not in message
    assert "pw" not in message


@pytest.mark.parametrize(("lease_s", "limit_s"), [(30.0, 15.0), (5.0, 2.5), (2.0, 1.0)])
def test_a_cekura_calls_total_time_limit_is_half_the_lease(lease_s: float, limit_s: float) -> None:
    s = load_settings(cekura_lease_s=lease_s, cekura_http_timeout_s=1.0)
    assert s.cekura_call_limit_s == limit_s
    assert s.cekura_call_limit_s >= s.cekura_http_timeout_s  # one socket operation always fits in a call
