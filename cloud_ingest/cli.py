"""``kyojo ingest``: run the cloud ingester as a process.

``run`` prints one JSON line of stats to stdout every ``--stats-interval`` and a final one (``"final": true``)
on SIGTERM/SIGINT, after flushing and acknowledging what was written. Module-level imports stay light: the
main ``kyojo`` CLI imports this module at start-up.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cloud_ingest.config import IngestSettings

app = typer.Typer(
    help="Cloud ingester: MQTT (shared subscription) -> validation and consent -> InfluxDB.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """Cloud ingester commands (a callback keeps ``run`` a named subcommand)."""


def _emit(stats: dict[str, Any], **extra: Any) -> None:
    line = json.dumps({"ts": round(time.time(), 3), **stats, **extra}, separators=(",", ":"))
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with IngestSettings keys")] = None,
    broker_host: Annotated[str | None, typer.Option(help="MQTT broker host")] = None,
    broker_port: Annotated[int | None, typer.Option(help="MQTT broker port")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle (enables TLS)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="client certificate (mTLS)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="client key (mTLS)")] = None,
    client_id: Annotated[str | None, typer.Option(help="MQTT client id; keep it stable across restarts")] = None,
    group: Annotated[str | None, typer.Option(help="shared subscription group")] = None,
    session_expiry: Annotated[int | None, typer.Option(help="MQTT session expiry, seconds")] = None,
    receive_maximum: Annotated[int | None, typer.Option(help="MQTT v5 receive maximum")] = None,
    mqtt_client: Annotated[
        str | None, typer.Option(help="data connection client: lean (default, faster) or paho (fallback)")
    ] = None,
    influx_api: Annotated[str | None, typer.Option(help="v1 or v2")] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB base URL")] = None,
    influx_db: Annotated[str | None, typer.Option(help="v1 database")] = None,
    influx_rp: Annotated[str | None, typer.Option(help="v1 retention policy")] = None,
    influx_org: Annotated[str | None, typer.Option(help="v2 organisation")] = None,
    influx_bucket: Annotated[str | None, typer.Option(help="v2 bucket")] = None,
    batch_points: Annotated[int | None, typer.Option(help="flush at this many points")] = None,
    max_batch_points: Annotated[int | None, typer.Option(help="at most this many points per POST")] = None,
    batch_interval: Annotated[float | None, typer.Option(help="flush after this many seconds")] = None,
    max_pending_points: Annotated[int | None, typer.Option(help="bound on points held in memory")] = None,
    stats_interval: Annotated[float | None, typer.Option(help="seconds between stats lines")] = None,
    log_level: Annotated[str, typer.Option(help="logging level (stderr)")] = "WARNING",
    self_stats: Annotated[
        bool, typer.Option("--self-stats/--no-self-stats", help="write own stats to InfluxDB (kyojo_ingest)")
    ] = True,
) -> None:
    """Run the ingester until SIGTERM/SIGINT.

    The v2 token comes from KYOJO_INGEST_INFLUX_TOKEN or the config file, never from the command line.
    """
    from cloud_ingest.ingester import Ingester

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _load(
        config,
        broker_host=broker_host,
        broker_port=broker_port,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_id=client_id,
        group=group,
        session_expiry=session_expiry,
        receive_maximum=receive_maximum,
        mqtt_client=mqtt_client,
        influx_api=influx_api,
        influx_url=influx_url,
        influx_db=influx_db,
        influx_rp=influx_rp,
        influx_org=influx_org,
        influx_bucket=influx_bucket,
        batch_points=batch_points,
        max_batch_points=max_batch_points,
        batch_interval=timedelta(seconds=batch_interval) if batch_interval is not None else None,
        max_pending_points=max_pending_points,
        stats_interval=timedelta(seconds=stats_interval) if stats_interval is not None else None,
    )

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    from cloud_ingest.config import TrustError

    ingester = Ingester(settings)
    try:
        ingester.start()
    except TrustError as err:
        raise _fail(str(err)) from err
    except ConnectionError as err:
        raise _fail(str(err), 1) from err
    _emit(ingester.stats(), event="started")
    from kyojo.runtime import sdnotify

    sdnotify.ready(f"ingester {settings.client_id} subscribed")
    # the watchdog pings only while the process keeps reporting (the loop below runs)
    last_report = [time.monotonic()]
    dog = sdnotify.Watchdog(
        lambda: (
            time.monotonic() - last_report[0] < 60 + 3 * settings.stats_interval.total_seconds()
            and bool(ingester.stats()["connected"])
        )
    )
    dog.start()
    interval = settings.stats_interval.total_seconds()
    # the platform-health dashboard reads these: measurement kyojo_ingest (+ kyojo_ingest_rejects), through a
    # writer of its own (the data writer belongs to the writer thread)
    from cloud_ingest.ingester import make_writer
    from cloud_ingest.initdb import IngestStatsPoints
    from cloud_ingest.writer import WriteError

    own = IngestStatsPoints(settings.client_id) if self_stats else None
    own_writer = make_writer(settings) if self_stats else None
    while not stop.wait(interval):
        st = ingester.stats()
        _emit(st)
        last_report[0] = time.monotonic()
        if own is not None and own_writer is not None:
            try:
                lines = own.lines(st, int(time.time() * 1000), gateways_online=int(st["gateways_online"]))
                own_writer.write("\n".join(lines).encode())
            except WriteError as err:
                logging.getLogger(__name__).warning("could not write own stats: %s", err)
    if own_writer is not None:
        own_writer.close()
    sdnotify.stopping()
    dog.stop()
    ingester.stop()
    _emit(ingester.stats(), final=True)


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file with IngestSettings keys")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _load(config: Path | None, **overrides: Any) -> IngestSettings:
    """Settings from flags > environment (KYOJO_INGEST_*) > --config > defaults; a clear message when invalid."""
    from pydantic import ValidationError

    from cloud_ingest.config import load_settings

    try:
        return load_settings(config, **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as err:
        raise _fail(f"invalid settings: {err}") from err


@app.command("new-key")
def new_key() -> None:
    """Print a fresh scope key (set it as scope_key / KYOJO_INGEST_SCOPE_KEY on every cloud service)."""
    from cloud_ingest.scope import new_key as make

    typer.echo(make())


@app.command("erasure")
def erasure(
    config: ConfigOpt = None,
    broker_host: Annotated[str | None, typer.Option(help="MQTT broker host")] = None,
    broker_port: Annotated[int | None, typer.Option(help="MQTT broker port")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle (enables TLS)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="the eraser's certificate (role eraser)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the eraser's key")] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB 1.x base URL")] = None,
    influx_db: Annotated[str | None, typer.Option(help="database")] = None,
    influx_username: Annotated[str | None, typer.Option(help="InfluxDB user (password: config or env)")] = None,
    client_id: Annotated[str, typer.Option(help="MQTT client id (with mTLS the certificate's name wins)")] = (
        "kyojo-eraser"
    ),
    grace: Annotated[float, typer.Option(help="seconds to wait after a withdrawal before erasing")] = 5.0,
    stats_interval: Annotated[float, typer.Option(help="seconds between stats lines")] = 1.0,
    log_level: Annotated[str, typer.Option(help="logging level (stderr)")] = "INFO",
) -> None:
    """Erase a subject's data for a purpose when its consent is withdrawn, and send the gateway a receipt.

    Prints one JSON line of stats per interval (``healthy`` false while disconnected); exits 1 when the broker
    refuses it or cannot be reached at start. Under systemd the watchdog is fed only while connected.
    """
    from cloud_ingest.config import TrustError
    from cloud_ingest.erasure import Eraser
    from kyojo.runtime import sdnotify

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _load(
        config,
        broker_host=broker_host,
        broker_port=broker_port,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        influx_url=influx_url,
        influx_db=influx_db,
        influx_username=influx_username,
    )
    eraser = Eraser(settings, client_id=client_id, grace_s=grace)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        eraser.start()
    except TrustError as err:
        raise _fail(str(err)) from err
    except ConnectionError as err:
        raise _fail(str(err), 1) from err
    _emit(eraser.stats(), event="started")
    sdnotify.ready("eraser subscribed")
    dog = sdnotify.Watchdog(lambda: eraser.connected)
    dog.start()
    while not stop.wait(stats_interval):
        _emit(eraser.stats())
    sdnotify.stopping()
    dog.stop()
    eraser.stop()
    _emit(eraser.stats(), final=True)


@app.command("notify")
def ingest_notify(
    config: ConfigOpt = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB 1.x base URL")] = None,
    influx_db: Annotated[str | None, typer.Option(help="database")] = None,
    influx_username: Annotated[str | None, typer.Option(help="InfluxDB user (password: config or env)")] = None,
    store: Annotated[Path, typer.Option(help="the notifier's own SQLite file (sign-ups, notices sent)")] = Path(
        "notify.sqlite3"
    ),
    smtp_host: Annotated[str, typer.Option(help="the city's mail relay")] = "127.0.0.1",
    smtp_port: Annotated[int, typer.Option(help="its port")] = 25,
    starttls: Annotated[bool, typer.Option(help="STARTTLS to the relay")] = False,
    sender: Annotated[str, typer.Option(help="From: address")] = "mimamori@city.example.jp",
    listen: Annotated[str, typer.Option(help="host:port of the family's sign-up page")] = "127.0.0.1:8090",
    base_url: Annotated[str | None, typer.Option(help="the page's public URL, for links in mails")] = None,
    interval: Annotated[float, typer.Option(help="seconds between polls of the events")] = 30.0,
    once: Annotated[bool, typer.Option(help="poll once, print the stats and exit (no page)")] = False,
    log_level: Annotated[str, typer.Option(help="logging level (stderr)")] = "INFO",
) -> None:
    """E-mail families who signed up when a home under watch-over goes unusually quiet, and when it is not.

    Reads only the watchover-family events the ingester accepted; serves the families' sign-up page (Japanese
    first). Prints one JSON line of stats per poll."""
    from cloud_ingest.erasure import InfluxV1Admin
    from cloud_ingest.notify import Mailer, Notifier, serve

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _load(config, influx_url=influx_url, influx_db=influx_db, influx_username=influx_username)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise _fail(f"--listen must be host:port, got {listen!r}")
    notifier = Notifier(
        store,
        InfluxV1Admin.from_settings(settings),
        Mailer(smtp_host, smtp_port, sender, starttls=starttls),
        base_url or f"http://{host}:{port}",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = None if once else serve(notifier, host, int(port))
    while True:
        try:
            notifier.poll()
        except Exception as err:  # the database away for a while must not stop the page or the next poll
            logging.getLogger("kyojo.notify").warning("poll failed: %s", err)
        _emit(vars(notifier.stats) | {"refused": dict(notifier.stats.refused)})
        if once or stop.wait(interval):
            break
    if server is not None:
        server.shutdown()
        server.server_close()
    notifier.close()


@app.command("declare")
def ingest_declare(
    file: Annotated[Path, typer.Argument(help="the signed declaration (kyojo provision declare --out FILE)")],
    config: ConfigOpt = None,
    broker_host: Annotated[str | None, typer.Option(help="MQTT broker host")] = None,
    broker_port: Annotated[int | None, typer.Option(help="MQTT broker port")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle (enables TLS)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="the downlink identity's certificate (role eraser)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="its key")] = None,
) -> None:
    """Publish a signed disaster declaration (or its end) to every gateway, retained. Exit 1 when the broker does
    not take it (only the cloud's downlink identity may write the topic)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from kyojo.contract.wire import DisasterDeclaration, disaster_topic

    try:
        decl = DisasterDeclaration.model_validate_json(file.read_bytes())
    except (OSError, ValueError) as err:
        raise _fail(f"{file}: not a declaration: {err}") from err
    if not decl.sig:
        raise _fail(f"{file}: not signed (kyojo provision declare signs it)")
    settings = _load(
        config, broker_host=broker_host, broker_port=broker_port, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
    )
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="kyojo-declare", protocol=MQTTProtocolVersion.MQTTv5
    )
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.tls_ca) if settings.tls_ca else None,
            certfile=str(settings.tls_cert) if settings.tls_cert else None,
            keyfile=str(settings.tls_key) if settings.tls_key else None,
        )
    acked: list[int] = []
    client.on_publish = lambda _c, _u, _mid, rc, _p: acked.append(int(rc.value))
    try:
        client.connect(settings.broker_host, settings.broker_port)
    except OSError as err:
        raise _fail(f"broker {settings.broker_host}:{settings.broker_port}: {err}", 1) from err
    client.loop_start()
    try:
        info = client.publish(disaster_topic(), decl.model_dump_json().encode(), qos=1, retain=True)
        info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()
    if not acked or acked[0] >= 0x80:
        raise _fail(f"the broker did not take the declaration (reason {acked[0] if acked else 'none'})", 1)
    typer.echo(f"published {decl.id} ({decl.status}) for {decl.area}, number {decl.seq}")


@app.command("safety")
def ingest_safety(
    declaration: Annotated[str, typer.Option(help="the declaration's id (kyojo provision declare prints it)")],
    config: ConfigOpt = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB 1.x base URL")] = None,
    influx_db: Annotated[str | None, typer.Option(help="database")] = None,
    influx_username: Annotated[str | None, typer.Option(help="InfluxDB user (password: config or env)")] = None,
    k: Annotated[int, typer.Option(min=2, help="counts below k are shown as <k")] = 5,
    write: Annotated[
        bool, typer.Option(help="also store the k-anonymous counts for the dashboard (measurement city_safety)")
    ] = False,
    every: Annotated[
        float | None, typer.Option(min=5, help="repeat every N seconds (with --write: keeps the dashboard current)")
    ] = None,
) -> None:
    """Households' answers to a disaster declaration, counted per area (k-anonymous), and the households that
    asked to be checked on and said where (JSON, one line per round)."""
    from cloud_ingest.erasure import InfluxV1Admin
    from cloud_ingest.safety import latest_statuses, release_lines, report

    settings = _load(config, influx_url=influx_url, influx_db=influx_db, influx_username=influx_username)
    admin = InfluxV1Admin.from_settings(settings)
    while True:
        try:
            rep = report(latest_statuses(admin, declaration), declaration, k)
            if write:
                admin.write("\n".join(release_lines(rep, int(time.time() * 1000))))
        except Exception as err:  # the database's own error, worded
            if every is None:
                raise _fail(f"query failed: {err}", 1) from err
            logging.getLogger("kyojo.safety").warning("round failed: %s", err)
        else:
            typer.echo(json.dumps(rep, ensure_ascii=False))
        if every is None:
            return
        time.sleep(every)


@app.command("rollup")
def ingest_rollup(
    config: ConfigOpt = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB 1.x base URL")] = None,
    influx_db: Annotated[str | None, typer.Option(help="database")] = None,
    influx_username: Annotated[str | None, typer.Option(help="InfluxDB user (password: config or env)")] = None,
    metric: Annotated[str, typer.Option(help="measurement to roll up")] = "energy",
    field: Annotated[str, typer.Option(help="field: delta for counters, mean for gauges")] = "delta",
    purpose: Annotated[
        str | None,
        typer.Option(
            help="only data released for this purpose [default: community-energy; preventive-care for alert.*]"
        ),
    ] = None,
    events: Annotated[
        str | None,
        typer.Option(
            help="count events instead: kinds matching this glob (e.g. 'alert.*'), each to community_<kind>; "
            "alerts count distinct alert_id among open updates, other kinds distinct event_id"
        ),
    ] = None,
    hours: Annotated[float, typer.Option(help="roll up the last N hours")] = 24.0,
    until: Annotated[str | None, typer.Option(help="end of the range (ISO time; default now)")] = None,
    bucket: Annotated[int, typer.Option(help="bucket length, seconds (604800 = a week)")] = 3600,
    k: Annotated[int, typer.Option(help="minimum households per released bucket")] = 15,
    max_share: Annotated[float, typer.Option(help="no household above this share of a total")] = 0.15,
    epsilon: Annotated[float | None, typer.Option(help="add Laplace noise with this epsilon per release")] = None,
    clip: Annotated[float | None, typer.Option(help="per-household contribution bound (sensitivity)")] = None,
    budget: Annotated[float, typer.Option(help="per-household total epsilon")] = 10.0,
    ledger: Annotated[Path, typer.Option(help="privacy budget ledger (SQLite)")] = Path("rollup-ledger.sqlite3"),
    reduce: Annotated[str, typer.Option(help="several series of one household at one time: max or sum")] = "max",
) -> None:
    """Publish community aggregates only where at least k households contribute (15/15 rule; optional noise)."""
    import time as _time
    from datetime import UTC, datetime

    from cloud_ingest.erasure import EraseError, InfluxV1Admin
    from cloud_ingest.rollup import Bucket, Ledger, RollupConfig, event_kinds, run_rollup

    if epsilon is not None and clip is None:
        raise _fail("--epsilon needs --clip (the sensitivity the noise is scaled to)")
    if purpose is None:
        purpose = "preventive-care" if events is not None and events.startswith("alert.") else "community-energy"
    base = RollupConfig(
        metric=metric,
        field=field,
        purpose=purpose,
        bucket_s=bucket,
        k=k,
        max_share=max_share,
        epsilon=epsilon,
        clip=clip,
        budget=budget,
        reduce=reduce,
    )
    if until is None:
        now_ms = int(_time.time() * 1000)
    else:
        try:
            t = datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError as err:
            raise _fail(f"--until {until!r}: not an ISO time") from err
        now_ms = int((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() * 1000)
    end = now_ms // (bucket * 1000) * bucket * 1000
    start = end - int(hours * 3_600_000)
    settings = _load(config, influx_url=influx_url, influx_db=influx_db, influx_username=influx_username)
    admin = InfluxV1Admin.from_settings(settings)
    book = Ledger(ledger) if epsilon is not None else None
    out: list[tuple[str, list[Bucket]]] = []
    try:
        cfgs = [base] if events is None else [base.for_events(kind) for kind in event_kinds(admin, events, purpose)]
        for cfg in cfgs:
            out.append((cfg.release_measurement, run_rollup(admin, cfg, start, end, ledger=book)))
    except (EraseError, ValueError) as err:
        raise _fail(str(err)) from err
    finally:
        if book is not None:
            book.close()
    n = released = 0
    for name, buckets in out:
        for b in buckets:
            doc = b.as_dict() if events is None else {"measurement": name, **b.as_dict()}
            typer.echo(json.dumps(doc))
            n += 1
            released += b.suppressed is None
    summary: dict[str, object] = {"buckets": n, "released": released, "suppressed": n - released}
    if events is not None:
        summary["measurements"] = [name for name, _ in out]
    typer.echo(json.dumps(summary))


@app.command("show-config")
def show_config(
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with IngestSettings keys")] = None,
) -> None:
    """Print the effective settings (file < environment) as JSON, secrets masked."""
    from cloud_ingest.config import load_settings

    settings = load_settings(config)
    typer.echo(settings.model_dump_json(indent=2))


def main() -> None:
    """Entry point of ``python -m cloud_ingest``."""
    app()
