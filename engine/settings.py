"""One Settings class for the whole engine; every field reads an ENGINE_* variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        None,
        description="PostgreSQL URL of a TimescaleDB database. Unset: the embedded database under data_dir.",
    )
    data_dir: Path = Field(Path(".engine"), description="Where the embedded database keeps its files.")
    connect_timeout: int = Field(
        5,
        ge=2,
        description="Seconds a database connection may take to open (libpq's connect_timeout, at least 2); a "
        "connect_timeout in ENGINE_DATABASE_URL wins.",
    )
    rules_path: Path = Field(Path("rules"), description="Default folder of rule files.")
    url: str | None = Field(
        None,
        description="Base URL of an `engine web` server (https://engine.example.com). Set: the SDK and the everyday "
        "CLI commands go through its HTTP API with ENGINE_API_KEY and need no database credentials; it wins over "
        "ENGINE_DATABASE_URL.",
    )
    api_key: SecretStr | None = Field(
        None, description="The API key sent to ENGINE_URL (`engine keys create`); never logged."
    )

    # SDK
    flush_interval: float = Field(1.0, gt=0, description="Seconds between SDK flushes at most.")
    flush_max_points: int = Field(
        20_000, ge=1, description="An SDK flush happens once this many points are buffered."
    )
    buffer_max_points: int = Field(
        5_000_000,
        ge=1,
        description="Points the SDK keeps in memory while the database is unreachable before run.log blocks.",
    )
    system_metrics_interval: float = Field(
        15.0, ge=0, description="Seconds between system metric samples (0 disables)."
    )
    sdk_idle_timeout: float = Field(
        5.0,
        ge=0,
        description="Seconds the SDK keeps its one database connection open after its last use (a job logging "
        "more often keeps it; one logging every few minutes does not hold a connection in between).",
    )
    strict: bool = Field(
        False,
        description="Make a run.log value that is not a number an error (tests); by default it is dropped "
        "with a warning naming the key and the rest of the call is logged.",
    )
    series_tail: int = Field(
        128,
        ge=8,
        le=100_000,
        description="Finite values kept per series for live evaluation; longer windows read the hypertable.",
    )

    # evaluation service
    interval: float = Field(5.0, gt=0, description="Seconds between evaluation ticks of `engine serve`.")
    statement_timeout_ms: int = Field(
        30_000, ge=100, description="Statement timeout of every statement of an evaluation tick."
    )
    evaluation_connections: int = Field(
        2,
        ge=1,
        le=32,
        description="Connections a tick evaluates on at once (the rules of one metric share a query; metrics and "
        "event rules are shared out among the connections). More than the database's cores gains nothing.",
    )

    # actions
    webhook_allow_hosts: str = Field(
        "",
        description="Comma-separated hosts, addresses or CIDR ranges that webhooks may reach although private.",
    )
    delivery_workers: int = Field(8, ge=1, le=256, description="Concurrent deliveries per `engine serve`.")
    delivery_connections: int = Field(
        2,
        ge=1,
        le=64,
        description="Database connections the deliveries of one `engine serve` share (a worker holds one only to "
        "claim, read a trigger or record an outcome, never during a request).",
    )
    delivery_lease_margin: float = Field(
        30.0,
        ge=0,
        description="Seconds added to a claimed delivery's lease (beyond its timeouts): a delivery whose sender died "
        "mid-request is sent again once the lease expires.",
    )
    retry_base_seconds: float = Field(
        1.0,
        gt=0,
        description="First retry delay of a failed delivery; it doubles per attempt (with jitter) up to 10 minutes.",
    )
    slack_api_url: str = Field(
        "https://slack.com/api/",
        description="Base URL of the Slack Web API used by `token` + `channel` Slack actions.",
    )
    smtp_url: str = Field(
        "",
        description="SMTP server of `email` actions: smtp://[user@]host[:port] (STARTTLS whenever offered; "
        "?starttls=required refuses a server without it) or smtps://[user@]host[:port] (implicit TLS).",
    )
    smtp_password: SecretStr | None = Field(
        None, description="Password of the SMTP user named in ENGINE_SMTP_URL (never logged)."
    )
    smtp_from: str = Field(
        "", description="Sender (From) of `email` actions: an address, or `Name <address>`."
    )
    smtp_ca_file: Path | None = Field(
        None, description="A PEM file of CA certificates to trust for the SMTP server, besides the system's."
    )
    base_url: str = Field(
        "",
        description="Public URL of this engine's web console, used to build ${run_url} and ${trigger_url} "
        "(https: its session cookies are Secure); unset: engine://entity/project/runs/ID.",
    )

    # `engine web`
    web_max_body: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body `engine web` accepts, in bytes (larger: 413, refused before it is read whole).",
    )
    web_pool_size: int = Field(
        10, ge=1, le=256, description="Database connections each `engine web` process keeps at most."
    )
    web_lock_wait: float = Field(
        5.0,
        gt=0,
        le=25,
        description="Seconds a log request waits for the run's previous batch to be stored (one batch of a run "
        "at a time) before answering 503 with Retry-After (the client sends the batch again; its batch id "
        "stores it once). Below the SDK's 30 s request timeout, so that a client never gives up on a request "
        "the server still holds a connection for.",
    )
    web_key_cache: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Seconds an `engine web` process takes a key it found valid without asking the database "
        "again (a request's key check is then no round trip): a key revoked in the database is refused by every "
        "process within this time. 0: every request asks. An expiry is checked on every request.",
    )
    web_header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's headers to `engine web` (slower ones are cut off).",
    )
    mlflow_entity: str = Field(
        "mlflow",
        pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="Entity of MLflow experiments whose name has no `/` (`engine web`'s /mlflow endpoint).",
    )
    mlflow_registry: str = Field(
        "mlflow",
        pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="Registry that MLflow registered models live in (`engine web`'s /mlflow endpoint).",
    )
    web_secret: SecretStr | None = Field(
        None,
        description="Secret that signs the web console's session cookies and form tokens (32+ random characters; "
        "never logged). Unset: `engine web` makes one at start-up, shared by its --workers, so a restart or "
        "another host behind the same load balancer signs everyone out.",
    )
    web_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="Hours a web console sign-in lasts before the key is asked again."
    )

    log_level: str = Field("INFO", description="Logging level of the service.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object per log line (time, level, logger, message, extra fields).",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint of `engine serve` (unset: off).",
    )
    metrics_address: str = Field(
        "127.0.0.1",
        description="Address the metrics endpoint listens on: this machine only, unless set (0.0.0.0: every interface).",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


API_PREFIX = "/api/v1"


def api_endpoint(settings: Settings) -> tuple[str, str]:
    """ENGINE_URL as the server's base URL (a trailing `/` or `/api/v1` left out) and
    ENGINE_API_KEY, for the SDK's and the CLI's HTTP clients; ConfigurationError when either
    is missing or the URL is not http(s)."""
    from engine.exceptions import ConfigurationError

    if not settings.url:
        raise ConfigurationError("ENGINE_URL is not set")
    if not settings.url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"ENGINE_URL must start with http:// or https:// (got {settings.url!r}), e.g. http://127.0.0.1:8080"
        )
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not key:
        raise ConfigurationError(
            f"ENGINE_URL is set ({settings.url}) but ENGINE_API_KEY is not: set it to a key made by "
            "`engine keys create` (ingest for training nodes, read for looking, admin for applying rules)"
        )
    return settings.url.rstrip("/").removesuffix(API_PREFIX), key
