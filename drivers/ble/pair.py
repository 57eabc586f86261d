"""``kyojo pair``: find, pair, assign and forget the household's BLE health devices.

Mount with ``app.add_typer(pair.app, name="pair")`` after :func:`use_site_loader` (the agent's CLI does both: the
gateway config is the agent's, and pairing sees only the :class:`Site` it reads from it). Commands (all take
``--config``, the gateway config):

- ``scan``: nearby devices advertising a supported health service (name, address, profile, RSSI);
- ``add ADDRESS --person NAME [--profile P] [--id ID] [--bond auto|always|never]``: find the device,
  connect, check it offers the profile's service, bond when it needs it, store it in
  ``<data_dir>/ble-devices.json`` (:mod:`drivers.ble.paired`) for that household member;
- ``list``; ``remove ADDRESS`` (also forgets the bond, best effort).

Exit codes: 0 done; 2 bad arguments, config or registry; 3 Bluetooth adapter missing or off; 4 device not
found within the timeout; 5 device does not offer the profile; 6 device refused to pair (not in pairing
mode); 7 the connection failed.

The radio is reached through bleak. :data:`backend_factory` yields the bleak backend classes to use
(``None`` = the platform's, BlueZ on the Pi); tests replace it with one that yields a
:class:`drivers.sim.virtual_ble.VirtualAir` backend. It is an async context manager because a virtual radio
lives in the event loop of the command that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError, BleakGATTProtocolError

from drivers.ble import gatt, paired
from drivers.ble.device import ID_PATTERN
from drivers.ble.errors import UnknownCharacteristic
from drivers.ble.pairing import (  # re-exported: kyojo pair's names stay where they were
    EXIT_LINK,
    EXIT_NO_ADAPTER,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Added,
    AlreadyPaired,
    Bond,
    LinkFailed,
    Nearby,
    NoAdapter,
    NotFound,
    PairError,
    PairingRefused,
    PinRejected,
    Site,
    WrongProfile,
    check_free,
    record,
)
from drivers.ble.pairing import (
    EXIT_PAIRING_REFUSED as EXIT_PAIRING_REFUSED,
)
from drivers.ble.pairing import (
    EXIT_WRONG_PROFILE as EXIT_WRONG_PROFILE,
)
from drivers.ble.profiles import PROFILES, Profile, ProfileName
from drivers.ble.transport import BleBackend, SharedScanner, Sighting
from kyojo.contract.vocab import KyojoError

# ------------------------------------------------------------------------------------------------------------
# Errors and exit codes
# ------------------------------------------------------------------------------------------------------------

# BlueZ D-Bus errors that mean "no usable adapter" (bleak raises BleakBluetoothNotAvailableError for most)
_ADAPTER_DBUS = ("org.bluez.Error.NotReady", "org.freedesktop.DBus.Error.ServiceUnknown")
# ATT errors by which a device says "pair with me first" (Core Vol 3 Part F 3.4.1.1)
_NEEDS_BOND = {0x05, 0x0F, 0x0C}  # Insufficient Authentication, Insufficient Encryption, ...Key Size
# How a stack reports that pairing ran but the two sides' keys differ (a wrong PIN): SMP reasons 0x01, 0x04, 0x0B,
# 0x0C (Core Vol 3 Part H 3.5.5) as Bumble names them, and BlueZ's D-Bus error
_WRONG_PIN = (
    "PASSKEY_ENTRY_FAILED",
    "CONFIRM_VALUE_FAILED",
    "DHKEY_CHECK_FAILED",
    "NUMERIC_COMPARISON_FAILED",
    "org.bluez.Error.AuthenticationFailed",
)

NO_ADAPTER_HELP = (
    "no usable Bluetooth adapter: check that the Pi's Bluetooth is switched on "
    "(`bluetoothctl power on`, `rfkill unblock bluetooth`) and that the bluetooth service runs"
)


def _adapter_error(err: BaseException) -> bool:
    if isinstance(err, BleakBluetoothNotAvailableError):
        return True
    if isinstance(err, BleakDBusError):
        return err.dbus_error in _ADAPTER_DBUS
    return "no bluetooth adapters found" in str(err).lower()


@contextlib.contextmanager
def _adapter_guard(*, os_errors: bool = False) -> Any:
    """Turn "no adapter / adapter off" failures from bleak into :class:`NoAdapter`.

    ``os_errors``: also an OSError, which is what bleak lets through when BlueZ's D-Bus system bus is not
    there at all (``FileNotFoundError`` on ``/run/dbus/system_bus_socket``: no bluetoothd, a container).
    """
    try:
        yield
    except BleakError as err:
        if _adapter_error(err):
            raise NoAdapter(f"{NO_ADAPTER_HELP} ({err})") from err
        raise
    except OSError as err:
        if os_errors:
            raise NoAdapter(f"{NO_ADAPTER_HELP} (the Bluetooth service is not reachable: {err})") from err
        raise


# ------------------------------------------------------------------------------------------------------------
# The backend (injectable)
# ------------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def platform_backend() -> AsyncIterator[BleBackend | None]:
    """bleak's own backend for this platform (BlueZ on the Pi)."""
    yield None


#: yields the bleak backend every command uses; replaced by tests and demos (virtual radio)
backend_factory: Callable[[], AbstractAsyncContextManager[BleBackend | None]] = platform_backend


# ------------------------------------------------------------------------------------------------------------
# Operations (async, no printing)
# ------------------------------------------------------------------------------------------------------------

SERVICE_PROFILES: dict[int, ProfileName] = {p.service: p.name for p in PROFILES.values()}


def _nearby(address: str, s: Sighting) -> Nearby:
    shorts = [_short(u) for u in s.service_uuids]
    profiles = tuple(SERVICE_PROFILES[u] for u in shorts if u in SERVICE_PROFILES)
    return Nearby(address, s.name, s.rssi, profiles, tuple(s.service_uuids))


async def scan(
    backend: BleBackend | None, duration: float, *, on_found: Callable[[Nearby], None] | None = None
) -> list[Nearby]:
    """Devices advertising any supported health service during ``duration`` seconds, strongest first.

    ``on_found`` hears each advertisement of such a device as it arrives (live progress, e.g. the web page).
    """

    def seen(address: str, sighting: Sighting) -> None:
        if on_found is not None:
            on_found(_nearby(address, sighting))

    with _adapter_guard(os_errors=True):
        found = await SharedScanner(backend).discover(sorted(SERVICE_PROFILES), duration, on_found=seen)
    return sorted((_nearby(a, s) for a, s in found.items()), key=lambda n: -n.rssi)


def _short(uuid: str) -> int | None:
    try:
        return gatt.uuid16(uuid)
    except UnknownCharacteristic:
        return None


def _offered(client: BleakClient) -> list[ProfileName]:
    shorts = {_short(s.uuid) for s in client.services}
    return [p.name for p in PROFILES.values() if p.service in shorts]


def _describe(profiles: list[ProfileName]) -> str:
    if not profiles:
        return "no supported health service"
    return ", ".join(f"{p} (0x{PROFILES[p].service:04X})" for p in profiles)


async def _probe(client: BleakClient, profile: Profile) -> BleakGATTProtocolError | None:
    """Subscribe to the profile's first present characteristic and unsubscribe; the ATT error if refused."""
    for sub in profile.subscriptions:
        char: BleakGATTCharacteristic | None = client.services.get_characteristic(gatt.uuid128(sub.uuid))
        if char is None:
            continue
        try:
            await client.start_notify(char, lambda _c, _d: None)
        except BleakGATTProtocolError as err:
            return err
        await client.stop_notify(char)
        return None
    return None


async def add_device(
    backend: BleBackend | None,
    address: str,
    profile: ProfileName | None,
    *,
    find_within: float = 20.0,
    bond: Bond = Bond.auto,
) -> Added:
    """Find ``address``, connect, check (or infer) the profile, bond if needed; raises :class:`PairError`."""
    address = address.upper()
    scanner = SharedScanner(backend)
    with _adapter_guard(os_errors=True):
        try:
            device = await scanner.find(address, find_within)
        except TimeoutError as err:
            raise NotFound(
                f"{address} was not seen within {find_within:g} s: switch it on, bring it close to the gateway and "
                "make it advertise (most devices advertise after a measurement or in pairing mode)"
            ) from err
    sighting = scanner.sightings.get(address)
    name = sighting.name if sighting else None
    client = BleakClient(device, timeout=find_within, backend=backend.client if backend else None)
    try:
        with _adapter_guard():
            try:
                await client.connect()
            except (BleakError, TimeoutError, OSError) as err:
                if isinstance(err, BleakError) and _adapter_error(err):
                    raise
                raise LinkFailed(f"could not connect to {address}: {err}; try again closer to the gateway") from err
        offered = _offered(client)
        if profile is None:
            if len(offered) != 1:
                raise WrongProfile(f"{address} offers {_describe(offered)}: say which with --profile")
            profile = offered[0]
        elif profile not in offered:
            raise WrongProfile(
                f"{address} ({name or 'no name'}) is not a {profile} device: it offers {_describe(offered)}"
            )
        bonded = False
        try:
            refused = None if bond is Bond.always else await _probe(client, PROFILES[profile])
            if bond is Bond.always or (refused is not None and refused.code in _NEEDS_BOND and bond is Bond.auto):
                try:
                    await client.pair()
                except BleakError as err:
                    if any(why in str(err) for why in _WRONG_PIN):
                        raise PinRejected(
                            f"{address} did not accept the PIN ({err}): check the PIN shown on or printed on the "
                            "device and run the command again"
                        ) from err
                    raise PairingRefused(
                        f"{address} refused to pair ({err}): put it in pairing mode (usually: hold its Bluetooth "
                        "button until the symbol blinks) and run the command again"
                    ) from err
                bonded = True
                refused = await _probe(client, PROFILES[profile])
            if refused is not None:
                if refused.code in _NEEDS_BOND:
                    raise PairingRefused(f"{address} needs bonding to share measurements: run again with --bond")
                raise LinkFailed(f"{address} refused the measurement subscription: {refused}")
        except (BleakError, TimeoutError) as err:
            if isinstance(err, PairError):
                raise
            raise LinkFailed(f"{address}: connection lost during pairing: {err}") from err
        return Added(address, name, profile, bonded)
    finally:
        with contextlib.suppress(BleakError, TimeoutError, OSError):
            await client.disconnect()


async def forget_bond(backend: BleBackend | None, address: str) -> str | None:
    """Remove the OS stack's pairing keys for ``address``; the error text if that failed (best effort)."""
    try:
        with _adapter_guard():
            await BleakClient(address, backend=backend.client if backend else None).unpair()
    except (BleakError, NotImplementedError, PairError) as err:
        # bleak's backends raise NotImplementedError where the OS stack cannot unpair (e.g. CoreBluetooth):
        # forgetting the bond is best effort, and the caller warns with this text
        return str(err)
    return None


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------

app = typer.Typer(help="Pair the household's Bluetooth health devices and assign them to people.", no_args_is_help=True)

DEFAULT_CONFIG = Path(os.environ.get("KYOJO_CONFIG", "/etc/kyojo/agent.toml"))
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway config (TOML); env KYOJO_CONFIG")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def N_(text: str) -> str:
    """Marks a message for Kyojo's catalogs (kyojo/i18n); translated where shown."""
    return text


#: what each failure means for the household, in its language; the stack's own words follow as the detail
_SUMMARY = {
    EXIT_USAGE: N_("This cannot be done as asked."),
    EXIT_NO_ADAPTER: N_("The gateway's Bluetooth is not available (is it switched on?)."),
    EXIT_NOT_FOUND: N_("The device was not found: switch it on or take a measurement, bring it closer, try again."),
    EXIT_WRONG_PROFILE: N_("This device does not offer what was asked (check the device or the --profile)."),
    EXIT_PAIRING_REFUSED: N_("The device refused to pair: put it in pairing mode (see its manual) and try again."),
    EXIT_LINK: N_("The connection to the device failed: bring it closer and try again."),
}


def _lang() -> str:
    """The household's language for these commands (LC_ALL or LANG)."""
    from kyojo.i18n import from_env

    return from_env()


def _t(text: str) -> str:
    from kyojo.i18n import gettext_for

    return gettext_for(_lang()).gettext(text)


def _fail(message: str, code: int) -> typer.Exit:
    if _lang() == "en":
        typer.echo(f"error: {message}", err=True)
    else:
        word, summary = _t("error"), _t(_SUMMARY.get(code, _SUMMARY[EXIT_USAGE]))
        typer.echo(f"{word}: {summary}", err=True)
        typer.echo(f"  ({message})", err=True)
    return typer.Exit(code)


#: Reads the gateway config at ``--config`` into a :class:`Site` (raising :class:`KyojoError` when it is bad).
#: The agent's CLI (``edge_agent/cli.py``), which owns the config format, sets it with :func:`use_site_loader`
#: when it mounts :data:`app`; drivers never import the agent.
_site_loader: Callable[[Path], Site] | None = None


def use_site_loader(loader: Callable[[Path], Site]) -> None:
    """Tell pairing how to read the gateway config (the agent's CLI does this when it mounts ``kyojo pair``)."""
    global _site_loader
    _site_loader = loader


def _site(config: Path) -> Site:
    if _site_loader is None:
        raise _fail("kyojo pair needs the gateway's config reader (mount it from the agent's CLI)", EXIT_USAGE)
    try:
        site = _site_loader(config)
    except KyojoError as err:
        raise _fail(str(err), EXIT_USAGE) from err
    return site


def _load(data_dir: Path) -> list[paired.PairedDevice]:
    try:
        return paired.load(data_dir)
    except paired.RegistryError as err:
        raise _fail(str(err), EXIT_USAGE) from err


def _run(op: Callable[[BleBackend | None], Any]) -> Any:
    async def main() -> Any:
        async with backend_factory() as backend:
            return await op(backend)

    try:
        return asyncio.run(main())
    except PairError as err:
        raise _fail(str(err), err.exit_code) from err
    except BleakError as err:
        if _adapter_error(err):
            raise _fail(f"{NO_ADAPTER_HELP} ({err})", EXIT_NO_ADAPTER) from err
        raise _fail(f"Bluetooth error: {err}", EXIT_LINK) from err


@app.command("scan")
def scan_cmd(
    config: ConfigOpt = DEFAULT_CONFIG,
    timeout: Annotated[float, typer.Option(help="seconds to listen", min=0.1)] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """List nearby health devices (address, RSSI, name, profile); paired ones are marked."""
    data_dir = _site(config).data_dir
    known = {d.address.upper(): d for d in _load(data_dir)}
    found: list[Nearby] = _run(lambda backend: scan(backend, timeout))
    if as_json:
        rows = [
            {
                "address": n.address,
                "name": n.name,
                "rssi": n.rssi,
                "profiles": list(n.profiles),
                "services": list(n.services),
                "paired_as": known[n.address].id if n.address in known else None,
            }
            for n in found
        ]
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not found:
        typer.echo(
            _t("no health device advertised within %(s)s s (switch it on or take a measurement)")
            % {"s": f"{timeout:g}"}
        )
        return
    head = (_t("ADDRESS"), "RSSI", _t("PROFILE"), _t("NAME"), _t("PAIRED"))
    typer.echo(f"{head[0]:<17}  {head[1]:>4}  {head[2]:<16}  {head[3]:<20}  {head[4]}")
    for n in found:
        mark = f"{known[n.address].id} ({known[n.address].subject})" if n.address in known else "-"
        typer.echo(f"{n.address:<17}  {n.rssi:>4}  {','.join(n.profiles):<16}  {n.name or '?':<20}  {mark}")


def _check_ident(value: str, what: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise _fail(f"{what} {value!r}: use letters, digits, '.', '_' or '-' (at most 64, no spaces)", EXIT_USAGE)
    return value


@app.command("add")
def add_cmd(
    address: Annotated[str, typer.Argument(help="the device's Bluetooth address (see `kyojo pair scan`)")],
    person: Annotated[str, typer.Option("--person", help="household member the measurements belong to")],
    profile: Annotated[str | None, typer.Option(help="expected profile (default: what the device offers)")] = None,
    device_id: Annotated[str | None, typer.Option("--id", help="device id (default: <profile>-<person>)")] = None,
    bond: Annotated[Bond, typer.Option(help="auto: when the device requires it")] = Bond.auto,
    timeout: Annotated[float, typer.Option(help="seconds to look for the device", min=0.1)] = 20.0,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Pair a device and assign it to a household member."""
    from drivers.ble.device import ADDRESS_PATTERN

    if not re.fullmatch(ADDRESS_PATTERN, address):
        raise _fail(f"{address!r} is not a Bluetooth address (like C4:7C:8D:6A:12:34)", EXIT_USAGE)
    if profile is not None and profile not in PROFILES:
        raise _fail(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}", EXIT_USAGE)
    _check_ident(person, "person")
    if device_id is not None:
        _check_ident(device_id, "--id")
    site = _site(config)
    address = address.upper()
    try:
        check_free(site, _load(site.data_dir), address, device_id)
    except AlreadyPaired as err:
        raise _fail(f"{err}{'; `kyojo pair remove` it first' if 'paired as' in str(err) else ''}", EXIT_USAGE) from err

    wanted: Any = profile
    added: Added = _run(lambda backend: add_device(backend, address, wanted, find_within=timeout, bond=bond))
    try:
        entry = record(site, added, person, device_id)
    except (AlreadyPaired, paired.RegistryError) as err:
        raise _fail(str(err), EXIT_USAGE) from err
    how = _t("bonded") if added.bonded else _t("no bonding needed")
    words = {"address": address, "name": added.name or "-", "id": entry.id, "profile": added.profile, "person": person}
    typer.echo(_t("paired %(address)s (%(name)s) as %(id)s: %(profile)s for %(person)s") % words + f" ({how})")
    typer.echo(_t("the running agent starts reading it within seconds (`kyojo agent status` shows its link)"))


def _local(iso: object, lang: str) -> str | None:
    """An ISO time as a person reads it: JST (said so) in Japanese, UTC in English."""
    if not isinstance(iso, str):
        return None
    from datetime import datetime

    from kyojo.i18n import local_time

    return local_time(datetime.fromisoformat(iso), lang)


def list_rows(site: Site) -> list[dict[str, object]]:
    """Every device ``kyojo pair list`` shows: the paired BLE devices (``source`` "paired", the registry's fields),
    the config's (``source`` "config"), then the home's other devices from the site (plugs); each with the
    household's name for it (``label``, or None)."""
    rows: list[dict[str, object]] = []
    for src, devices in (("paired", _load(site.data_dir)), ("config", list(site.config_devices))):
        for d in devices:
            doc: dict[str, object] = d.model_dump(mode="json")
            if src == "config":
                doc["added_at"] = None
            rows.append({**doc, "kind": "ble", "source": src, "label": site.labels.get(d.id)})
    rows += [{**o, "label": site.labels.get(str(o.get("id")))} for o in site.others]
    return rows


@app.command("list")
def list_cmd(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """List the home's devices: BLE devices paired here or set in the gateway config, and plugs; whom each belongs
    to and the name the household gave it (``kyojo pair rename``)."""
    from kyojo.i18n import gettext_for

    site = _site(config)
    rows = list_rows(site)
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    _ = gettext_for(site.lang).gettext
    if not rows:
        typer.echo(_("no devices yet (`kyojo pair scan`, then `kyojo pair add`; plugs: `kyojo pair plugs`)"))
        return
    person, bonded, heard_word = _("person"), _("bonded"), _("heard")
    ble = [r for r in rows if r["kind"] == "ble"]
    if ble:
        typer.echo(_("Health devices (Bluetooth)"))
        for r in ble:
            source = _("paired here") if r["source"] == "paired" else _("in the gateway config")
            typer.echo(
                f"  {r['id']:<24} {r['address']:<17} {r['profile']:<16} {person} {r['subject']:<10} "
                f"{r['label'] or r['name'] or ''}  ({source}{', ' + bonded if r['bonded'] else ''})"
            )
    plugs = [r for r in rows if r["kind"] == "plug"]
    if plugs:
        typer.echo(_("Plugs"))
        for r in plugs:
            source = _("paired here") if r["source"] == "paired" else _("in the gateway config")
            heard = _local(r.get("last_seen"), site.lang) or _("not heard yet")
            typer.echo(f"  {r['id']:<24} {r['key']:<40} {r['label'] or r['what']}  ({source}; {heard_word} {heard})")


@app.command("remove")
def remove_cmd(
    address: Annotated[str, typer.Argument(help="the device's Bluetooth address")],
    forget: Annotated[bool, typer.Option("--forget-bond/--keep-bond", help="also delete the pairing keys")] = True,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Forget a paired device (its stored measurements on the gateway are kept)."""
    data_dir = _site(config).data_dir
    devices = _load(data_dir)
    entry = paired.find(devices, address)
    if entry is None:
        raise _fail(
            _t("%(address)s is not paired (see `kyojo pair list`)") % {"address": address.upper()}, EXIT_NOT_FOUND
        )
    paired.save(data_dir, [d for d in devices if d is not entry])
    typer.echo(
        _t("removed %(id)s (%(address)s, %(profile)s of %(person)s)")
        % {"id": entry.id, "address": entry.address, "profile": entry.profile, "person": entry.subject}
    )
    if forget and entry.bonded:

        async def unpair(backend: BleBackend | None) -> str | None:
            return await forget_bond(backend, entry.address)

        problem = _run(unpair)
        if problem:
            typer.echo(
                _t("warning: could not delete the pairing keys (%(problem)s); `bluetoothctl remove` it")
                % {"problem": problem},
                err=True,
            )
    typer.echo(_t("the running agent stops reading it within seconds"))
