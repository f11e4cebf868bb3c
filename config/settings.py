"""Every setting of cekura-worker, read once from the environment (and an optional `.env` file).

Each field's name is its environment variable, lower-cased, so `CEKURA_POLL_MAX_S` is `cekura_poll_max_s`.
Nothing else in the project reads `os.environ`: code takes a `Settings` (tests build one directly) or calls
`get_settings()`. (The exceptions: `PROMETHEUS_MULTIPROC_DIR`, the hand-off prometheus_client itself defines
between the supervisor and its worker processes, and the `OTEL_*` variables the OpenTelemetry SDK reads itself
once tracing is on: sampling, resource attributes, batching, the exporter's timeout, compression and certificates.
The ones that decide whether tracing is on, where spans go and how, are read here.)

Secrets are checked as well as typed: a Kubernetes secret made from a file ends in a newline, which httpcore would
refuse in a header and then quote, escaped, in its error, out of reach of redaction. So `CEKURA_API_KEY` and
`REDIS_URL` lose surrounding whitespace, and a value that still holds a control character is refused without being
shown (`hide_input_in_errors`: a pydantic error never quotes any input).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError
from worker.redact import DEFAULT_MIN_SECRET_LEN  # shorter secrets can't be masked: refused where they enter

#: Share of CEKURA_LEASE_S one Cekura call may take in all, connect to last byte (`Settings.cekura_call_limit_s`):
#: CEKURA_HTTP_TIMEOUT_S bounds each socket operation, so an answer trickling in would otherwise outlive the lease
#: and the reconciler would send the call again while the first is still in flight.
DEFAULT_CALL_LIMIT_SHARE = 0.5


class Settings(BaseSettings):
    """Typed, validated settings with safe development defaults and no default for secrets.

    One value is derived rather than set: `cekura_call_limit_s`, the total time a Cekura call may take, is half of
    CEKURA_LEASE_S, so a call always ends (timed out, to be retried) before its job's lease lapses.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # Cekura API
    cekura_api_key: SecretStr | None = None  # surrounding whitespace stripped; printable ASCII only
    cekura_api_url: str = "https://api.cekura.ai"
    cekura_http_timeout_s: float = Field(10.0, gt=0, le=120)  # each connect/read/write; see cekura_call_limit_s
    cekura_max_response_bytes: int = Field(1_048_576, ge=1024)
    cekura_ca_bundle: str | None = None
    cekura_rate_limit_rps: float = Field(0.0, ge=0)  # 0: no fleet-wide cap
    cekura_rate_limit_burst: int = Field(10, ge=1)

    # Redis and streams
    # redis://, rediss:// (TLS), unix://, or redis+sentinel:// / rediss+sentinel:// naming Sentinels and a service:
    # redis+sentinel://[:password@]host:26379[,host:26379...]/service_name[/db]; surrounding whitespace stripped
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_ca_bundle: str | None = None  # CA file for rediss:// (verification always stays on)
    redis_sentinel_password: SecretStr | None = None  # the Sentinels' own password (requirepass), if they have one
    # Writes that matter wait for this many replicas (WAIT) before they are relied on: 0 = don't wait.
    cekura_redis_min_replicas: int = Field(0, ge=0, le=16)
    cekura_redis_wait_timeout_ms: int = Field(1000, ge=10, le=60_000)  # how long one WAIT may take
    cekura_key_prefix: str = Field("cekura", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    cekura_queue: str = Field("cekura", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    cekura_requests_stream: str = "cekura:requests"
    cekura_results_stream: str = "cekura:results"
    cekura_progress_stream: str = "cekura:progress"
    cekura_progress_events: bool = False
    cekura_results_maxlen: int = Field(100_000, ge=100)
    cekura_request_max_bytes: int = Field(131_072, ge=256, le=16_777_216)  # fits a 10,000-character answer, escaped
    cekura_intake_group: str = "cekura-worker"

    # Polling
    cekura_poll_initial_s: float = Field(2.0, gt=0, le=3600)
    cekura_poll_max_s: float = Field(30.0, gt=0, le=3600)
    cekura_poll_factor: float = Field(1.5, ge=1.0, le=10.0)
    cekura_poll_jitter: float = Field(0.1, ge=0.0, lt=1.0)

    # Learned polling schedules (worker/cekura/polling.py)
    cekura_learn_polling: bool = True  # false: every kind keeps its declared schedule (durations still recorded)
    cekura_poll_min_s: float = Field(1.0, gt=0, le=3600)  # no learned interval is shorter (nor the declared initial)
    #: Per kind, JSON: {"evaluator.run": {"initial_s": 30, "factor": 1, "max_s": 120, "min_s": 5}}; wins over its plan.
    cekura_poll_overrides: dict[str, dict[str, float]] = Field(default_factory=dict)
    cekura_learn_warmup_jobs: int = Field(20, ge=1, le=100_000)  # jobs recorded before a kind's history is used
    cekura_learn_window_jobs: int = Field(200, ge=2, le=1_000_000)  # the history is halved when it passes this
    cekura_learn_refresh_s: float = Field(5.0, gt=0, le=3600)  # each process re-reads a kind's history this often
    cekura_learn_delay_target: float = Field(1.0, gt=0, le=100)  # delays aimed at, x the declared schedule's

    # Transient failures (network, 5xx, 429)
    cekura_retry_initial_s: float = Field(1.0, gt=0, le=600)
    cekura_retry_max_s: float = Field(60.0, gt=0, le=3600)
    cekura_max_consecutive_errors: int = Field(30, ge=1, le=10_000)

    # Jobs
    cekura_job_deadline_s: float = Field(3600.0, gt=0)
    cekura_job_deadline_max_s: float = Field(86_400.0, gt=0)
    cekura_job_ttl_s: int = Field(86_400, ge=60)

    # Reliability
    cekura_reconcile_interval_s: float = Field(5.0, gt=0, le=600)
    cekura_reconcile_grace_s: float = Field(30.0, gt=0, le=3600)
    cekura_lease_s: float = Field(30.0, gt=0, le=3600)  # half of it is each Cekura call's total time limit

    # Worker processes
    cekura_processes: int = Field(2, ge=1, le=64)
    cekura_threads: int = Field(8, ge=1, le=256)
    cekura_idle_wake_ms: int = Field(1000, ge=10, le=60_000)
    cekura_shutdown_timeout_s: float = Field(20.0, gt=0, le=300)
    cekura_heartbeat_interval_s: float = Field(5.0, gt=0, le=300)
    #: Where each worker process touches its liveness file (`healthcheck --liveness` reads it); a tmpfs is fine.
    cekura_health_dir: str = "/tmp/cekura-worker"
    cekura_metrics_port: int | None = Field(None, ge=1, le=65535)

    # Logs
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    cekura_console_token: SecretStr | None = None  # `console` actions need it; without it the console is read-only

    # Result webhooks: `cekura-worker webhooks` receives Cekura's, and a webhook makes its evaluator run poll now
    cekura_webhooks: bool = False  # on: evaluator runs are polled only as a safety net (below)
    cekura_webhook_secret: SecretStr | None = None  # the project's `webhook_secret`, sent as X-CEKURA-SECRET
    cekura_webhook_max_bytes: int = Field(8_388_608, ge=1024, le=268_435_456)  # a body holds runs and transcripts
    # With webhooks on, an evaluator run whose webhook never comes is still polled this often (its added delay).
    cekura_webhook_safety_net_s: float = Field(600.0, ge=0.01, le=86_400)
    # A start whose answer was lost is looked for by its tag this long before the job fails "outcome unknown".
    cekura_lookup_settle_s: float = Field(120.0, ge=0.01, le=3600)

    # Traces (worker/tracing/), by OpenTelemetry's own variable names: off unless an OTLP endpoint is set or
    # OTEL_TRACES_EXPORTER=otlp (the default endpoint, http://localhost:4318/v1/traces); OTLP over HTTP/protobuf.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: str = ""  # "otlp", or "none" (off whatever else is set)
    otel_exporter_otlp_endpoint: str | None = None  # a base URL: /v1/traces is appended
    otel_exporter_otlp_traces_endpoint: str | None = None  # the full URL, used as it is
    otel_exporter_otlp_protocol: str | None = None  # only http/protobuf is shipped
    otel_exporter_otlp_traces_protocol: str | None = None
    otel_exporter_otlp_headers: SecretStr | None = None  # `key=value,...`, e.g. a vendor's API key
    otel_exporter_otlp_traces_headers: SecretStr | None = None
    otel_service_name: str = Field("cekura-worker", min_length=1, max_length=256)
    # The console links a job's trace id here: any http(s) URL with `{trace_id}`, e.g. Jaeger's
    # http://jaeger:16686/trace/{trace_id}
    cekura_trace_url_template: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("cekura_api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.cekura.ai")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must not carry a query, fragment or credentials")
        return value.rstrip("/")

    @field_validator("cekura_api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("is empty")
        # It travels as an HTTP header value: anything else would be refused there, and quoted in the error.
        if not (key.isascii() and key.isprintable()):
            raise ValueError("must be printable ASCII, without control characters (the value is not shown)")
        if len(key) < DEFAULT_MIN_SECRET_LEN:
            raise ValueError(f"is shorter than {DEFAULT_MIN_SECRET_LEN} characters: too short to be masked in output")
        return SecretStr(key)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        # Checked before parsing: urlsplit silently drops tabs and newlines, so the password it reported would not
        # be the one in the variable.
        if not url.isprintable():
            raise ValueError("must not contain control characters (the value is not shown)")
        parts = urlsplit(url)
        if parts.password is not None and not unquote(parts.password).isprintable():
            raise ValueError("must not hold a percent-encoded control character in its password (not shown)")
        # A password urlsplit can't see is one nothing can mask: a raw '#', '/' or '?' in it moves the '@' out of
        # the netloc, and a `password=` query parameter (which redis-py reads) isn't in the netloc at all.
        after_scheme = url.split("://", 1)[-1]
        if "@" in after_scheme and "@" not in parts.netloc:
            raise ValueError("has '#', '/' or '?' in its password: percent-encode them (the value is not shown)")
        query_keys = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
        if query_keys & {"password", "username"}:
            raise ValueError("must carry its user and password before the host, not as query parameters (not shown)")
        try:
            if parts.scheme not in SENTINEL_SCHEMES:  # a Sentinel URL lists several hosts: checked below
                parts.port  # noqa: B018 - raises on a malformed port, whose message would quote it
        except ValueError:
            raise ValueError("has a malformed host or port (the value is not shown)") from None
        if parts.password is not None and 0 < len(unquote(parts.password)) < DEFAULT_MIN_SECRET_LEN:
            raise ValueError(f"has a password shorter than {DEFAULT_MIN_SECRET_LEN} characters: too short to be masked")
        if parts.scheme not in ("redis", "rediss", "unix", *SENTINEL_SCHEMES):
            raise ValueError("must be a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL")
        if parts.scheme in SENTINEL_SCHEMES:
            sentinel_parts(url)  # raises a ValueError that names what is wrong, never quoting the password
        return SecretStr(url)

    @field_validator("cekura_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip()) < DEFAULT_MIN_WEBHOOK_SECRET_LEN:
            raise ValueError(f"must be at least {DEFAULT_MIN_WEBHOOK_SECRET_LEN} characters (anyone may POST to it)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("redis_sentinel_password")
    @classmethod
    def _check_sentinel_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip()) < DEFAULT_MIN_SECRET_LEN:
            raise ValueError(f"is shorter than {DEFAULT_MIN_SECRET_LEN} characters: too short to be masked in output")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("cekura_poll_overrides")
    @classmethod
    def _check_poll_overrides(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for kind, fields in value.items():
            unknown = sorted(set(fields) - {"initial_s", "factor", "max_s", "min_s"})
            if unknown:
                raise ValueError(f"{kind}: unknown field(s) {', '.join(unknown)} (initial_s, factor, max_s, min_s)")
            for name, number in fields.items():
                low, high = (1.0, 10.0) if name == "factor" else (1e-3, 86_400.0)
                if not low <= number <= high:
                    raise ValueError(f"{kind}: {name} must be between {low:g} and {high:g}")
            if fields.get("max_s", float("inf")) < max(fields.get("initial_s", 0.0), fields.get("min_s", 0.0)):
                raise ValueError(f"{kind}: max_s must be at least initial_s and min_s")
        return value

    @field_validator("otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint")
    @classmethod
    def _check_otlp_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://otel-collector:4318")
        return value.strip()

    @field_validator("otel_exporter_otlp_protocol", "otel_exporter_otlp_traces_protocol")
    @classmethod
    def _check_otlp_protocol(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.strip() != "http/protobuf":
            raise ValueError("only http/protobuf is supported (the OTLP/HTTP exporter is what ships)")
        return value.strip()

    @field_validator("otel_traces_exporter")
    @classmethod
    def _check_traces_exporter(cls, value: str) -> str:
        if value.strip().lower() not in ("", "otlp", "none"):
            raise ValueError("must be otlp or none (the OTLP/HTTP exporter is the one that ships)")
        return value.strip().lower()

    @field_validator("cekura_trace_url_template")
    @classmethod
    def _check_trace_url_template(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "{trace_id}" not in value or urlsplit(value.strip()).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL holding {trace_id}, e.g. http://jaeger:16686/trace/{trace_id}")
        return value.strip()

    @model_validator(mode="after")
    def _check_learning(self) -> Settings:
        if self.cekura_learn_window_jobs < 2 * self.cekura_learn_warmup_jobs:
            raise ValueError("CEKURA_LEARN_WINDOW_JOBS must be at least twice CEKURA_LEARN_WARMUP_JOBS (it is halved)")
        return self

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.cekura_poll_max_s < self.cekura_poll_initial_s:
            raise ValueError("CEKURA_POLL_MAX_S must be at least CEKURA_POLL_INITIAL_S")
        if self.cekura_retry_max_s < self.cekura_retry_initial_s:
            raise ValueError("CEKURA_RETRY_MAX_S must be at least CEKURA_RETRY_INITIAL_S")
        if self.cekura_lease_s < 2 * self.cekura_http_timeout_s:
            raise ValueError("CEKURA_LEASE_S must be at least twice CEKURA_HTTP_TIMEOUT_S (a claim outlives its call)")
        if self.cekura_job_deadline_s > self.cekura_job_deadline_max_s:
            raise ValueError("CEKURA_JOB_DEADLINE_S must not exceed CEKURA_JOB_DEADLINE_MAX_S")
        return self

    @property
    def cekura_call_limit_s(self) -> float:
        """The total time one Cekura call may take, connect to last byte: `DEFAULT_CALL_LIMIT_SHARE` of the lease.

        CEKURA_LEASE_S is at least twice CEKURA_HTTP_TIMEOUT_S, so this is never shorter than one socket operation.
        """
        return self.cekura_lease_s * DEFAULT_CALL_LIMIT_SHARE

    @property
    def tracing_on(self) -> bool:
        """Whether this configuration turns traces on: an OTLP endpoint is set or OTEL_TRACES_EXPORTER=otlp, and
        neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none."""
        if self.otel_sdk_disabled or self.otel_traces_exporter == "none":
            return False
        endpoint = self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
        return endpoint is not None or self.otel_traces_exporter == "otlp"

    @property
    def redis_url_redacted(self) -> str:
        """The Redis URL with any password replaced by `***`, for logs and status output."""
        return redact_url(self.redis_url.get_secret_value())

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's prefix."""
        return ":".join((self.cekura_key_prefix, *parts))


def redact_url(url: str) -> str:
    """Replace the password of a URL with `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    hosts = parts.netloc.rpartition("@")[2]  # as written: a Sentinel URL lists several host:port pairs
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{hosts}"))


#: The shortest webhook secret accepted: the receiver's one credential, guessable if short.
DEFAULT_MIN_WEBHOOK_SECRET_LEN = 16

#: URL schemes that name Sentinels rather than Redis itself (the second one: TLS to the Sentinels and Redis).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

#: Sentinel's own port, for a host given without one.
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelParts:
    """What a `redis+sentinel://` URL says: where the Sentinels are, which service's primary to use, and how."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def sentinel_parts(url: str) -> SentinelParts:
    """Parse `redis+sentinel://[user:password@]host[:port][,host[:port]...]/service_name[/db]`; ValueError names
    what is wrong (never the password)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in (piece.strip() for piece in hosts.split(",")):
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            colon, port = rest[:1], rest[1:]
        else:
            host, colon, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or (colon and not port.isdigit()) or (port and not 0 < int(port) < 65536):
            raise ValueError("lists a Sentinel with a malformed host or port (the value is not shown)")
        sentinels.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "must name the Sentinel service after the hosts: redis+sentinel://host:26379/service_name[/db]"
        )
    return SentinelParts(
        sentinels=tuple(sentinels),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss+sentinel",
    )


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into a `ConfigError` that names each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False):
            name = ".".join(str(part) for part in error["loc"]).upper()
            problems.append(f"{name}: {error['msg']}" if name else str(error["msg"]).removeprefix("Value error, "))
        raise ConfigError("invalid setting " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return load_settings()
