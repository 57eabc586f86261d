"""Gateway configuration: one TOML file, validated once by pydantic when it is loaded.

Every section forbids unknown keys, so a typo fails at start-up with the key's path instead of being ignored.
Durations accept seconds (``60``) or ISO 8601 (``"PT1M"``).
"""

from __future__ import annotations

import importlib
import json
import time
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers import registry
from drivers.ocpp.surplus import Config as SurplusConfig
from edge_agent import processors as processor_kinds
from kyojo.contract.vocab import Category, KyojoError
from kyojo.contract.wire import Ident


class ConfigError(KyojoError, ValueError):
    """The configuration file is missing, not TOML, or does not validate."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Profile(StrEnum):
    HOME = "home"
    TRUCK = "truck"
    CHARGING_SITE = "charging_site"


class GatewaySection(_Section):
    id: Ident
    profile: Profile = Profile.HOME
    data_dir: Path = Path("/var/lib/kyojo")
    #: the city's area this gateway answers disaster declarations for (none: it answers none)
    area: Ident | None = None


class TlsSection(_Section):
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    key_password: SecretStr | None = None


class MqttSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, description="defaults to the gateway id")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSection | None = None
    keepalive: timedelta = timedelta(seconds=30)
    session_expiry: timedelta = timedelta(days=7)
    max_inflight: int = Field(default=100, ge=1, le=10_000)
    reconnect_min: timedelta = timedelta(seconds=0.5)
    reconnect_max: timedelta = timedelta(seconds=30)


def _default_windows() -> dict[Category, timedelta]:
    return {
        Category.HEALTH: timedelta(minutes=1),
        Category.ENERGY: timedelta(minutes=1),
        Category.EV: timedelta(minutes=1),
        Category.MOBILITY: timedelta(seconds=30),
    }


class AggregationSection(_Section):
    windows: dict[Category, timedelta] = Field(default_factory=_default_windows)
    grace: timedelta = Field(default=timedelta(seconds=5), description="wait for late readings")
    max_items_per_message: int = Field(default=200, ge=1, le=2000)

    @field_validator("windows")
    @classmethod
    def _whole_seconds(cls, value: dict[Category, timedelta]) -> dict[Category, timedelta]:
        merged = _default_windows() | value
        for cat, win in merged.items():
            secs = win.total_seconds()
            if secs < 1 or secs != int(secs) or 86_400 % int(secs):
                raise ValueError(f"window for {cat.value} must be whole seconds dividing a day, got {win}")
        return merged

    def window_s(self, category: Category) -> int:
        return int(self.windows[category].total_seconds())


class StoreSection(_Section):
    retention: timedelta = timedelta(days=14)
    commit_interval: timedelta = timedelta(seconds=1)


class OutboxSection(_Section):
    max_messages: int = Field(default=200_000, ge=10)


class SimClockSection(_Section):
    """Simulated time for demos and tests: starts at ``start`` (epoch s) and runs ``speed`` x real time; and how the
    agent treats a wall clock that jumps (:mod:`edge_agent.clockguard`; both in real time)."""

    speed: float = Field(default=1.0, gt=0, le=100_000)
    start: float | None = None
    #: drift of the wall clock against the monotonic one that counts as a jump
    jump_tolerance: timedelta = Field(default=timedelta(seconds=120), gt=timedelta(0))
    #: how long a jump must last to be taken as the new time (NTP set the clock)
    jump_confirm: timedelta = Field(default=timedelta(minutes=15), gt=timedelta(0))


class WebTlsSection(_Section):
    """HTTPS for the household page, e.g. with the gateway's own certificate (``/var/lib/kyojo/tls/identity.*``)."""

    cert: Path
    key: Path


class WebSection(_Section):
    """The household web app (``kyojo web serve``): where it listens and how long a sign-in lasts.

    By default it listens on loopback and on every address of every interface except the uplink (the interface(s)
    of the default route, or ``uplink`` when named), so the page is on the home LAN and never on the WAN. Naming
    ``interfaces`` or ``addresses`` listens there only (loopback stays on unless ``loopback = false``); an
    interface named in both ``interfaces`` and ``uplink`` is refused.
    """

    interfaces: list[str] = Field(default_factory=list, description="LAN interfaces to listen on, e.g. wlan0")
    addresses: list[str] = Field(default_factory=list, description="addresses to listen on, e.g. 192.168.1.20")
    uplink: list[str] = Field(default_factory=list, description="never listen here (default: the default route's)")
    loopback: bool = True
    port: int = Field(default=8080, ge=1, le=65535)
    tls: WebTlsSection | None = None
    session_idle: timedelta = Field(default=timedelta(days=90), description="a sign-in lasts this long unused")
    code_ttl: timedelta = Field(default=timedelta(days=7), description="how long a pairing code stays valid")
    max_failures: int = Field(default=5, ge=1, le=100, description="wrong codes from one address before lockout")
    lockout: timedelta = Field(default=timedelta(minutes=15))

    @field_validator("interfaces", "uplink")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or "/" in name or len(name) > 15:
                raise ValueError(f"not a network interface name: {name!r}")
        return value

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for addr in value:
            try:
                ipaddress.ip_address(addr)
            except ValueError as err:
                raise ValueError(f"not an IP address: {addr!r}") from err
        return value


#: a ``[[devices]]`` entry, validated by the model its kind registers in ``drivers.registry``
DeviceConfig = Annotated[Any, BeforeValidator(registry.validate)]
#: a ``[[processors]]`` entry (Readings in, Events out), validated the same way
ProcessorConfig = Annotated[Any, BeforeValidator(processor_kinds.validate)]


class SafetySection(_Section):
    """Disaster declarations (edge_agent.disaster): who may declare, how often the home answers."""

    city_ca: Path | None = Field(default=None, description="the city CA certificate (default: [mqtt.tls] ca)")
    interval: timedelta = Field(default=timedelta(minutes=30), description="between two safety statuses")


class EvSection(_Section):
    """EV charging on this gateway: ``[ev.surplus]`` runs the solar-surplus loop (drivers/ocpp/surplus.py) between a
    smart meter and the gateway's OCPP central system."""

    surplus: SurplusConfig | None = None


class TradingSection(_Section):
    """Neighbour energy trading (issue 18): ``meter``, the B-route meter (``kind = "bmeter"``, ``export = true``)
    whose registers give the metered values of the household's traded slots (edge_agent.trade_meter); ``ledger_url``,
    where the household's page reads its own ledger entries (``/trades``, edge_agent/web/pages/trades.py; without it
    the page shows only what the home sent), ``timeout`` and ``city_ca`` for that read."""

    meter: Ident | None = Field(default=None, description="the bmeter device whose 0xE0/0xE3 settle traded slots")
    offer_price: int | None = Field(
        default=None, ge=0, le=1000, description="offer the forecast surplus on its own, at least this yen/kWh"
    )
    offer_share: float = Field(default=0.8, gt=0, le=1, description="the share of the forecast surplus offered")
    offer_ahead: timedelta = Field(default=timedelta(hours=1), description="offer for the slot starting this soon")
    ledger_url: str | None = Field(
        default=None, description="the city's ledger read API, e.g. https://ledger.city.example (http: loopback only)"
    )
    timeout: timedelta = Field(
        default=timedelta(seconds=3),
        gt=timedelta(0),
        le=timedelta(seconds=30),
        description="how long the page waits for the ledger",
    )
    city_ca: Path | None = Field(
        default=None, description="the city CA that certifies the ledger's key (default: [safety] / [mqtt.tls] ca)"
    )

    @model_validator(mode="after")
    def _offers_need_the_meter(self) -> TradingSection:
        if self.offer_price is not None and self.meter is None:
            raise ValueError("[trading] offer_price needs meter (the forecast comes from its history)")
        if not timedelta(minutes=10) <= self.offer_ahead <= timedelta(hours=24):
            raise ValueError("[trading] offer_ahead must be between 10 minutes and 24 hours")
        return self

    @field_validator("ledger_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        try:
            u = urlsplit(value)
            _port = u.port  # raises on a port that is not a number or out of range
        except ValueError as err:
            raise ValueError(f"not a URL: {value!r}") from err
        if u.scheme not in ("https", "http") or not u.hostname:
            raise ValueError(f"ledger_url must be an https:// URL, not {value!r}")
        if u.query or u.fragment or u.username or u.password:
            raise ValueError("ledger_url takes no query, fragment or credentials")
        if u.scheme == "http" and u.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("ledger_url must use https:// (plain http only on this machine's loopback)")
        return value.rstrip("/")


class AgentConfig(_Section):
    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    aggregation: AggregationSection = AggregationSection()
    store: StoreSection = StoreSection()
    outbox: OutboxSection = OutboxSection()
    clock: SimClockSection = SimClockSection()
    web: WebSection = WebSection()
    safety: SafetySection = SafetySection()
    devices: list[DeviceConfig] = Field(default_factory=list)
    processors: list[ProcessorConfig] = Field(default_factory=list)
    ev: EvSection = EvSection()
    trading: TradingSection = TradingSection()

    @model_validator(mode="after")
    def _trading_meter(self) -> AgentConfig:
        meter = self.trading.meter
        if meter is None:
            return self
        found = [d for d in self.devices if getattr(d, "kind", None) == "bmeter" and getattr(d, "id", None) == meter]
        if not found:
            raise ValueError(f"[trading] meter = {meter!r}: no [[devices]] entry of kind bmeter has that id")
        if not getattr(found[0], "export", False):
            raise ValueError(f"[trading] meter = {meter!r}: set export = true on it (0xE3, the energy sold)")
        return self

    @model_validator(mode="after")
    def _surplus_devices(self) -> AgentConfig:
        loop = self.ev.surplus
        if loop is None:
            return self
        ocpp = [d for d in self.devices if getattr(d, "kind", None) == "ocpp" and getattr(d, "id", None) == loop.ocpp]
        if not ocpp:
            raise ValueError(f"[ev.surplus] ocpp = {loop.ocpp!r}: no [[devices]] entry of kind ocpp has that id")
        allowed = getattr(ocpp[0], "charge_points", [])
        if loop.charge_point is not None and loop.charge_point not in allowed:
            raise ValueError(f"[ev.surplus] charge_point = {loop.charge_point!r} is not in that entry's charge_points")
        return self

    @property
    def db_path(self) -> Path:
        return self.gateway.data_dir / "gateway.sqlite3"

    @property
    def status_path(self) -> Path:
        return self.gateway.data_dir / "status.json"

    @property
    def city_ca(self) -> Path | None:
        """The city CA certificate the gateway trusts for the ledger: ``[trading] city_ca``, else ``[safety]
        city_ca``, else ``[mqtt.tls] ca``."""
        if self.trading.city_ca is not None:
            return self.trading.city_ca
        if self.safety.city_ca is not None:
            return self.safety.city_ca
        return None if self.mqtt.tls is None else self.mqtt.tls.ca

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"gw-{self.gateway.id}"


def load_config(path: Path) -> AgentConfig:
    """Read and validate a gateway config file; relative data_dir is resolved against the file's folder."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    gw = raw.get("gateway")
    if isinstance(gw, dict) and "data_dir" in gw and not Path(str(gw["data_dir"])).is_absolute():
        gw["data_dir"] = str((path.parent / str(gw["data_dir"])).resolve())
    for section in ("safety", "trading"):
        sec = raw.get(section)
        if isinstance(sec, dict) and "city_ca" in sec and not Path(str(sec["city_ca"])).is_absolute():
            sec["city_ca"] = str((path.parent / str(sec["city_ca"])).resolve())
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(explain(path, err, raw)) from err


def explain(path: Path | str, err: ValidationError, raw: Mapping[str, Any]) -> str:
    """A validation error as an installer reads it: one line per problem, naming the section or the
    ``[[devices]]``/``[[processors]]`` entry by its id (entries counted from 1), the key, what was given and what is
    allowed; no pydantic jargon, indices from 0 or URLs."""
    problems = err.errors(include_url=False)
    lines = [f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the configuration"]
    for e in problems:
        where, model = _where(tuple(e["loc"]), raw)
        lines.append(f"  {where}: {_what(e, model)}")
    return "\n".join(lines)


def _where(loc: tuple[Any, ...], raw: Mapping[str, Any]) -> tuple[str, type[BaseModel] | None]:
    """``[[devices]] "meter-1" (entry 3) rbid`` and the model that owns the last key (for the allowed keys)."""
    if not loc:
        return "(top level)", AgentConfig
    head = str(loc[0])
    if head in ("devices", "processors") and len(loc) > 1 and isinstance(loc[1], int):
        entries = raw.get(head) or []
        entry = entries[loc[1]] if loc[1] < len(entries) and isinstance(entries[loc[1]], dict) else {}
        name = entry.get("id") or entry.get("kind") or "?"
        keys = ".".join(str(k) for k in loc[2:])
        label = f'[[{head}]] "{name}" (entry {loc[1] + 1})' + (f" {keys}" if keys else "")
        return label, _entry_model(head, entry) if len(loc) == 3 else None
    field = AgentConfig.model_fields.get(head)
    section = field.annotation if field is not None else None
    owner = section if isinstance(section, type) and issubclass(section, BaseModel) else None
    if len(loc) == 1:
        return f"[{head}]" if owner is not None else head, AgentConfig
    return f"[{head}] " + ".".join(str(k) for k in loc[1:]), owner if len(loc) == 2 else None


def _entry_model(head: str, entry: Mapping[str, Any]) -> type[BaseModel] | None:
    kind = entry.get("kind")
    if not isinstance(kind, str):
        return None
    try:
        if head == "devices":
            return cast("type[BaseModel]", registry.module_for(kind).Config)
        module = processor_kinds.PROCESSORS.get(kind)
        return cast("type[BaseModel]", importlib.import_module(module).Config) if module else None
    except (KyojoError, ImportError, AttributeError):
        return None


def _what(e: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    kind, given, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if kind == "missing":
        return "missing (required)"
    if kind == "extra_forbidden":
        allowed = f" (allowed: {', '.join(sorted(model.model_fields))})" if model is not None else ""
        return f"unknown key{allowed}"
    if kind in ("literal_error", "enum"):
        return f"{given!r} is not allowed; allowed: {ctx.get('expected', '?')}"
    if kind == "value_error":
        return f"{ctx.get('error', e['msg'])}" + (f" (given {given!r})" if isinstance(given, str | int | float) else "")
    shown = f"{given!r}" if isinstance(given, str | int | float | bool) else type(given).__name__
    return f"{e['msg'][:1].lower()}{e['msg'][1:]} (given {shown})"


def gateway_now(config: AgentConfig, real: float | None = None) -> float:
    """The agent's clock (epoch s): real time, except under a simulated ``[clock]`` (the demo, test benches), where
    it is extrapolated from the agent's last status, so that a consent given from the CLI or the web page starts
    when the agent's windows do (and, before the agent ever ran, from the clock's start)."""
    real = time.time() if real is None else real
    clock = config.clock
    if clock.speed == 1.0 and clock.start is None:
        return real
    try:
        status = json.loads(config.status_path.read_text(encoding="utf-8"))
        return float(status["clock"]) + (real - float(status["at"])) * clock.speed
    except (OSError, ValueError, KeyError, TypeError):
        return clock.start if clock.start is not None else real
