"""Plug CLI commands: ``kyojo decode plug`` (mounted by the lead via :func:`register`) and the ``app`` group
(``kyojo plugs ...``): ``discovered`` lists what the driver recorded, ``lan-broker-config`` renders the home's LAN
Mosquitto (see :mod:`drivers.plugs.broker`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from drivers.plugs.parse import decode
from kyojo.contract.vocab import ParseError, reading_json

app = typer.Typer(
    help="Smart plugs on the home's LAN broker: what was heard, the LAN broker's config.", no_args_is_help=True
)


def _payload_bytes(payload: Any) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload).encode("utf-8")


def messages_of(doc: Any) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) pairs from the shapes the fixture files use: one ``{"topic", "payload"}`` message, a
    list of them, ``{"messages": [...]}``, Shelly ``{"records": [{"device", "status"}]}`` (each metering
    component as ``<id>/status/<component>``), ``notify_status_example`` and Zigbee2MQTT ``example_payload``."""
    if isinstance(doc, list):
        for item in doc:
            yield from messages_of(item)
        return
    if not isinstance(doc, dict):
        raise typer.BadParameter("expected a JSON object or list of messages (or pass --topic)")
    if "topic" in doc and "payload" in doc:
        yield str(doc["topic"]), _payload_bytes(doc["payload"])
        return
    found = False
    if isinstance(doc.get("messages"), list):
        found = True
        yield from messages_of(doc["messages"])
    for record in doc.get("records", []) if isinstance(doc.get("records"), list) else []:
        found = True
        device = record.get("device") or {}
        prefix = device.get("id", "shelly") if isinstance(device, dict) else "shelly"
        for comp, status in (record.get("status") or {}).items():
            if comp != "sys":
                yield f"{prefix}/status/{comp}", _payload_bytes(status)
    for key in ("notify_status_example", "example_payload"):
        if isinstance(doc.get(key), dict):
            found = True
            yield from messages_of(doc[key])
    if not found:
        raise typer.BadParameter("no messages found (expected topic+payload, messages, records, ...)")


def decode_plug(
    source: Annotated[str, typer.Argument(help="a JSON file, or JSON text (a message, or a payload with --topic)")],
    topic: Annotated[str | None, typer.Option(help="MQTT topic: treat SOURCE as the raw payload")] = None,
    ts: Annotated[float | None, typer.Option(help="reception time (POSIX s); default now")] = None,
) -> None:
    """Decode smart-plug MQTT messages (Tasmota, Shelly Gen1/Gen2+, Zigbee2MQTT) and print them as JSON."""
    path = Path(source)
    text = path.read_text(encoding="utf-8") if len(source) < 4096 and path.is_file() else source
    received = time.time() if ts is None else ts
    if topic is not None:
        pairs = [(topic, text.encode("utf-8"))]
    else:
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise typer.BadParameter(f"not JSON ({err}); pass --topic to decode a raw payload") from None
        pairs = list(messages_of(doc))
    out: list[dict[str, Any]] = []
    failed = 0
    for t, payload in pairs:
        try:
            dec = decode(t, payload, received_at=received)
        except ParseError as err:
            failed += 1
            out.append({"topic": t, "error": {"reason": err.reason, "detail": err.detail}})
            continue
        out.append(
            {
                "topic": t,
                "family": dec.family,
                "readings": [reading_json(r) for r in dec.readings],
                "states": [{"device": s.device, "key": s.key, "value": s.value, "raw": s.raw} for s in dec.states],
                "announcements": [_ann(a) for a in dec.announcements],
            }
        )
        if dec.unknown:  # state words the family does not define: reported, the rest of the message kept
            out[-1]["unknown"] = [{"device": u.device, "field": u.field, "raw": u.raw} for u in dec.unknown]
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
    if failed:
        raise typer.Exit(1)


def _ann(a: Any) -> dict[str, Any]:
    fields = ("family", "device", "model", "mac", "ip", "name", "firmware")
    return {f: getattr(a, f) for f in fields}


def register(decode_app: typer.Typer) -> None:
    """Add ``plug`` to the ``kyojo decode`` group."""
    decode_app.command("plug")(decode_plug)


@app.command("discovered")
def discovered(
    data_dir: Annotated[Path, typer.Option(help="the agent's data directory")] = Path(".kyojo"),
) -> None:
    """List the plugs the running driver heard from (paired or not), from ``plugs-<id>.json`` state files."""
    rows: list[dict[str, Any]] = []
    for state in sorted(data_dir.glob("plugs-*.json")):
        try:
            doc = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rows.extend(doc.get("seen", []) if isinstance(doc, dict) else [])
    typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))


@app.command("lan-broker-config")
def lan_broker_config(
    spec: Annotated[Path, typer.Argument(help="TOML: listen, port, conf_dir, gateway, zigbee2mqtt, [[plugs]]")],
    out: Annotated[Path, typer.Option(help="directory for mosquitto.conf, passwd and acl (0600)")],
) -> None:
    """Render the home's LAN Mosquitto: no anonymous clients, each plug writes only its own topics (docs/LAN.md)."""
    import tomllib

    from pydantic import ValidationError

    from drivers.plugs.broker import BrokerConfError, LanBrokerSpec, render_lan_broker_conf

    try:
        parsed = LanBrokerSpec.model_validate(tomllib.loads(spec.read_text(encoding="utf-8")))
        written = render_lan_broker_conf(parsed).write(out)
    except (OSError, tomllib.TOMLDecodeError, ValidationError, BrokerConfError) as err:
        raise typer.BadParameter(f"{spec}: {err}") from None
    for path in written:
        typer.echo(str(path))
    typer.echo(f"copy them to {parsed.conf_dir} (mosquitto.conf to /etc/mosquitto/conf.d/kyojo-lan.conf)", err=True)
