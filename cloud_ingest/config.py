"""Ingester settings: defaults < TOML file < environment (``KYOJO_INGEST_*``) < explicit arguments."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kyojo.contract.errors import KyojoError


class TrustError(KyojoError, ValueError):
    """Settings a cloud service refuses to run with in a deployment (a guessable group, no scope key, ...)."""


#: group names anyone would guess: an ingester refuses them at start
WELL_KNOWN_GROUPS = frozenset({"kyojo-ingest", "kyojo", "ingest", "ingester", "ingesters", "default", "share", "group"})


def _default_client_id() -> str:
    # Stable across restarts of the same host: a persistent MQTT session is found again by its client id.
    return f"kyojo-ingest-{socket.gethostname()}"[:64]


class IngestSettings(BaseSettings):
    """Everything an ingester process needs.

    Env vars: ``KYOJO_INGEST_<FIELD>`` (e.g. KYOJO_INGEST_INFLUX_URL).
    """

    model_config = SettingsConfigDict(env_prefix="KYOJO_INGEST_", extra="forbid", frozen=True)

    # -- MQTT ---------------------------------------------------------------------------------------------
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=1883, gt=0, lt=65536)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: with mTLS the broker takes the certificate's CN as the client id, so the consent connection needs an
    #: identity of its own (CN ``<client_id>-consents``); default: the data connection's certificate
    consent_tls_cert: Path | None = None
    consent_tls_key: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=64)
    #: the ingesters' secret ``$share`` group (``kyojo provision broker-config`` makes it and the broker ACL admits
    #: only it); no default: a well-known name would let anyone who can subscribe join the group
    group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]+$")
    keepalive: int = Field(default=30, ge=5)
    #: seconds the broker keeps this client's session (subscriptions + unacknowledged messages) after it left
    session_expiry: int = Field(default=3600, ge=0)
    #: MQTT v5 Receive Maximum: unacknowledged QoS 1 messages the broker may have outstanding to us
    receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    #: MQTT client of the data connection: "lean" (cloud_ingest.leanclient, ~2x paho's message rate) or
    #: "paho" (the fallback). The consent connection always uses paho.
    mqtt_client: Literal["lean", "paho"] = "lean"

    # -- trust -------------------------------------------------------------------------------------------
    #: hex key of the household tag (cloud_ingest.scope), the same for every ingester, eraser and rollup;
    #: ``kyojo ingest new-key`` makes one. Required when TLS is configured (a deployment).
    scope_key: SecretStr | None = None
    #: the purpose catalog the cloud enforces (categories and minimum window per purpose); default: the shipped one
    catalog: Path | None = None
    #: JSON ``{gateway id: Ed25519 public key (base64)}`` registered at enrollment (``kyojo provision sign
    #: --signing-key``): consent records must carry a valid signature by their gateway's key
    gateway_keys: Path | None = None
    #: JSON ``{gateway id: area}`` registered at enrollment (``kyojo provision area --out``): an event naming an
    #: area (a disaster status) is taken only from a gateway registered in that area
    gateway_areas: Path | None = None
    #: per gateway: at most this many consent records, subjects and devices are taken (memory, and InfluxDB's
    #: series cardinality, stay bounded whatever one gateway invents)
    max_consents_per_gateway: int = Field(default=256, ge=1)
    max_subjects_per_gateway: int = Field(default=64, ge=1)
    max_devices_per_gateway: int = Field(default=512, ge=1)
    #: seconds start() gives the retained consent snapshot before opening the data connection anyway (messages
    #: whose consent is not loaded yet then wait, unacknowledged, until the snapshot completes)
    snapshot_wait: float = Field(default=5.0, ge=0)
    #: seconds a message waits for its consent record (which travels on another connection and may come later)
    #: once the snapshot is complete, before it is rejected as ``unknown_consent``
    consent_wait: float = Field(default=5.0, ge=0)
    #: seconds between audit anchors published back to a gateway (retained, kyojo/v1/<gw>/anchor)
    anchor_interval: float = Field(default=10.0, ge=0)

    # -- InfluxDB -----------------------------------------------------------------------------------------
    influx_api: Literal["v1", "v2"] = "v1"
    influx_url: str = "http://127.0.0.1:8086"
    influx_db: str = "kyojo"
    influx_rp: str | None = None
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    #: CA bundle to trust for an https:// InfluxDB URL (a private CA)
    influx_ca: Path | None = None
    influx_org: str | None = None
    influx_bucket: str | None = None
    influx_token: SecretStr | None = None
    influx_timeout: float = Field(default=10.0, gt=0)

    # -- batching, backpressure, retries ------------------------------------------------------------------
    batch_points: int = Field(default=5000, ge=1)
    #: upper bound of one POST (never below batch_points): a backlog is written as a stream of such requests
    max_batch_points: int = Field(default=20_000, ge=1)
    batch_interval: timedelta = timedelta(seconds=0.2)
    max_pending_points: int = Field(default=100_000, ge=1)
    retry_initial: float = Field(default=0.05, gt=0)
    retry_max: float = Field(default=5.0, gt=0)
    stats_interval: timedelta = timedelta(seconds=10)

    @model_validator(mode="after")
    def _check(self) -> IngestSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if (self.consent_tls_cert is None) != (self.consent_tls_key is None):
            raise ValueError("consent_tls_cert and consent_tls_key go together")
        if self.influx_api == "v2" and not (self.influx_org and self.influx_bucket and self.influx_token):
            raise ValueError("influx_api v2 needs influx_org, influx_bucket and influx_token")
        if self.max_pending_points < self.batch_points:
            raise ValueError("max_pending_points must be >= batch_points")
        if self.scope_key is not None:
            from cloud_ingest.scope import parse_key

            parse_key(self.scope_key.get_secret_value())
        return self

    @property
    def tls(self) -> bool:
        """True when the MQTT connections use TLS (a deployment, not a loopback test)."""
        return self.tls_ca is not None or self.tls_cert is not None

    def scope_key_bytes(self) -> bytes | None:
        """The household-tag key, or None when none is configured."""
        if self.scope_key is None:
            return None
        from cloud_ingest.scope import parse_key

        return parse_key(self.scope_key.get_secret_value())

    def trust_problems(self) -> list[str]:
        """What makes these settings unfit for a deployment (empty: fine). Services refuse to start on any."""
        problems = []
        group = self.group or ""
        if not group:
            problems.append("no group: set the secret $share group printed by `kyojo provision broker-config`")
        elif group.lower() in WELL_KNOWN_GROUPS or (self.tls and len(group) < 16):
            problems.append(
                f"group {group!r} is well known or short: anyone who can subscribe could join it and swallow a share "
                "of the data; use the secret group printed by `kyojo provision broker-config`"
            )
        if self.tls and self.scope_key is None:
            problems.append("no scope_key: `kyojo ingest new-key` makes one; ingesters, eraser and rollup share it")
        return problems

    @property
    def share_group(self) -> str:
        """The group, which :meth:`trust_problems` requires (``kyojo-ingest-dev`` only where none is set)."""
        return self.group or "kyojo-ingest-dev"

    @property
    def data_filter(self) -> str:
        """The shared subscription for aggregates (MQTT v5 ``$share/<group>/<filter>``)."""
        return f"$share/{self.share_group}/kyojo/v1/+/agg/+"

    @property
    def data_filters(self) -> list[str]:
        """Every shared data subscription: aggregates and events (pickups, alerts)."""
        return [self.data_filter, f"$share/{self.share_group}/kyojo/v1/+/event/+"]

    @property
    def consent_filter(self) -> str:
        """The unshared subscription for consent records (retained)."""
        return "kyojo/v1/+/consent/+"


def load_settings(config_file: Path | None = None, **overrides: object) -> IngestSettings:
    """Settings from ``overrides`` > environment > ``config_file`` (TOML) > defaults."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if config_file is None:
        return IngestSettings(**values)  # type: ignore[arg-type]
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class _FromFile(IngestSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                TomlConfigSettingsSource(settings_cls, toml_file=config_file),
            )

    return _FromFile(**values)  # type: ignore[arg-type]
