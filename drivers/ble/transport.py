"""BLE I/O on bleak: one shared scanner, one :class:`Link` per peripheral (connect, subscribe, read Battery
Level, reconnect with backoff forever), and per-device health.

Nothing here decodes: a link hands ``(uuid16, bytes, ts)`` to a sink; :mod:`drivers.ble.driver` decodes.
The bleak backend classes can be injected (``BleBackend``) so tests run this code unmodified against virtual
Bumble peripherals (:mod:`drivers.sim.virtual_ble`); ``None`` means the platform backend (BlueZ on the Pi).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble import gatt, racp
from drivers.ble.profiles import Subscription
from drivers.ble.records import RecordLog
from kyojo.contract.vocab import Clock
from kyojo.runtime.backoff import Backoff
from kyojo.runtime.cancel import honour_cancellation

log = logging.getLogger(__name__)

#: receives (16-bit characteristic UUID, value, POSIX time of arrival)
Sink = Callable[[int, bytes, float], None]

#: errors that mean "the radio link failed, try again later" (anything else goes to the agent's supervisor)
LINK_ERRORS: tuple[type[BaseException], ...] = (BleakError, TimeoutError, OSError, EOFError)


class MissingCharacteristic(BleakError):
    """The peer has no characteristic the profile requires (wrong device at that address?)."""


@dataclass(frozen=True, slots=True)
class BleBackend:
    """bleak backend classes to use; ``None`` = the platform's (BlueZ, CoreBluetooth, WinRT)."""

    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None


@dataclass(slots=True)
class Sighting:
    """The last advertisement seen from an address."""

    ts: float
    rssi: int
    name: str | None
    service_uuids: tuple[str, ...]
    device: BLEDevice = field(repr=False)


class SharedScanner:
    """One :class:`bleak.BleakScanner` for the whole gateway (BlueZ allows one discovery per adapter).

    It scans only while somebody waits: :meth:`find` (a link looking for its peer) or :meth:`discover`
    (pairing, by advertised service UUIDs). Every advertisement updates :attr:`sightings` (last seen, RSSI).
    """

    def __init__(self, backend: BleBackend | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend or BleBackend()
        self._clock = clock
        self._scanner: BleakScanner | None = None
        self._users = 0
        self._lock: asyncio.Lock | None = None
        self._waiters: dict[str, list[asyncio.Future[BLEDevice]]] = {}
        self._listeners: list[Callable[[BLEDevice, AdvertisementData], None]] = []
        self.sightings: dict[str, Sighting] = {}

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        key = device.address.upper()
        self.sightings[key] = Sighting(
            self._clock(), adv.rssi, adv.local_name or device.name, tuple(adv.service_uuids), device
        )
        for fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.set_result(device)
        for listener in list(self._listeners):
            listener(device, adv)

    async def _acquire(self) -> None:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            self._users += 1
            if self._users == 1:
                self._scanner = BleakScanner(self._on_advertisement, backend=self._backend.scanner)
                await self._scanner.start()

    async def _release(self) -> None:
        assert self._lock is not None
        async with self._lock:
            self._users -= 1
            if self._users == 0 and self._scanner is not None:
                scanner, self._scanner = self._scanner, None
                await scanner.stop()

    async def find(self, address: str, within_s: float) -> BLEDevice:
        """Scan until ``address`` advertises; TimeoutError after ``within_s`` seconds."""
        key = address.upper()
        fut: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        await self._acquire()
        try:
            async with asyncio.timeout(within_s):  # not wait_for: 3.11's can swallow a cancellation
                return await fut
        finally:
            waiters = self._waiters.get(key, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(key, None)
            await asyncio.shield(self._release())

    async def discover(
        self,
        service_uuids: Sequence[int],
        duration: float,
        *,
        on_found: Callable[[str, Sighting], None] | None = None,
    ) -> dict[str, Sighting]:
        """Peripherals advertising any of ``service_uuids`` (16-bit) during ``duration`` seconds, by address;
        ``on_found(address, sighting)`` is called for each of their advertisements as it arrives."""
        wanted = {gatt.uuid128(u) for u in service_uuids}
        found: dict[str, Sighting] = {}

        def listener(device: BLEDevice, adv: AdvertisementData) -> None:
            if wanted & {u.lower() for u in adv.service_uuids}:
                key = device.address.upper()
                found[key] = self.sightings[key]
                if on_found is not None:
                    on_found(key, found[key])

        self._listeners.append(listener)
        await self._acquire()
        try:
            await asyncio.sleep(duration)
        finally:
            self._listeners.remove(listener)
            await asyncio.shield(self._release())
        return found


@dataclass(slots=True)
class LinkHealth:
    """Per-device health as the agent's status shows it."""

    address: str
    connected: bool = False
    last_seen: float | None = None  # last advertisement or notification (POSIX s)
    rssi: int | None = None  # from the last advertisement before connecting
    battery_level: int | None = None  # %, from Battery Level
    connects: int = 0
    reconnects: int = 0  # attempts after the first
    last_error: str | None = None
    notifications: int = 0
    drains: int = 0  # completed RACP "report stored records" procedures
    last_drain: str | None = None  # the RACP outcome of the last drain, e.g. "op 0x01: success"
    stored_records: int | None = None  # what the device said it had to report before the last drain

    def as_dict(self) -> dict[str, object]:
        """A plain mapping for ``Driver.health()``."""
        return {
            "address": self.address,
            "connected": self.connected,
            "last_seen": self.last_seen,
            "rssi": self.rssi,
            "battery_level": self.battery_level,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "notifications": self.notifications,
            "drains": self.drains,
            "last_drain": self.last_drain,
            "stored_records": self.stored_records,
        }


class Link:
    """One peripheral, forever: find it, connect, subscribe, drain stored records, wait for the disconnection,
    back off, again.

    Stored records: when the peer has a Record Access Control Point (0x2A52) and ``records`` is given, every
    connection asks for the records after the highest Sequence Number taken so far (``records.last_sequence``)
    -- RACP "Report stored records", operator ">=", filter Sequence Number -- or for all records on first
    contact; the records arrive as notifications/indications of the measurement characteristic (delivered to
    the sink like live values) and the procedure ends with a RACP Response Code indication. The sink (the
    driver's :class:`~drivers.ble.records.RecordLog`) drops anything it has already taken.
    """

    def __init__(
        self,
        address: str,
        subscriptions: Sequence[Subscription],
        *,
        scanner: SharedScanner,
        clock: Clock,
        backend: BleBackend | None = None,
        backoff: Backoff | None = None,
        scan_timeout: float = 30.0,
        connect_timeout: float = 20.0,
        read_battery: bool = True,
        records: RecordLog | None = None,
        drain_timeout: float = 60.0,
    ) -> None:
        self.address = address.upper()
        self.subscriptions = tuple(subscriptions)
        self.scanner = scanner
        self.clock = clock
        self.backend = backend or BleBackend()
        self.backoff = backoff or Backoff()
        self.scan_timeout = scan_timeout
        self.connect_timeout = connect_timeout
        self.read_battery = read_battery
        self.records = records
        self.drain_timeout = drain_timeout
        self.state = LinkHealth(self.address)
        self.client: BleakClient | None = None

    async def run(self, sink: Sink) -> NoReturn:
        """Deliver every notification/indication (and Battery Level reads) to ``sink``; never returns.

        Link failures (:data:`LINK_ERRORS`) are recorded and retried with backoff; other exceptions and
        cancellation propagate.
        """
        attempt = 0
        while True:
            # a cancellation swallowed inside bleak's or the backend's connect (3.11's wait_for) still counts
            honour_cancellation()
            if self.state.connects or attempt:
                self.state.reconnects += 1
            try:
                connected = await self._session(sink)
            except LINK_ERRORS as err:
                connected = False
                self.state.last_error = f"{type(err).__name__}: {err}"
                log.info("%s: link failed: %s", self.address, self.state.last_error)
            finally:
                self.state.connected = False
            attempt = 0 if connected else attempt + 1
            await self.clock.sleep(self.backoff.delay(attempt))

    def _deliver(self, sink: Sink, uuid: int, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        now = self.clock.now()
        self.state.last_seen = now
        self.state.notifications += 1
        if uuid == gatt.BATTERY_LEVEL and len(data) == 1:
            self.state.battery_level = data[0]
        sink(uuid, bytes(data), now)

    async def _session(self, sink: Sink) -> bool:
        """One connection; returns True once it was fully set up and then dropped."""
        device = await self.scanner.find(self.address, self.scan_timeout)
        sighting = self.scanner.sightings.get(self.address)
        if sighting is not None:
            self.state.rssi, self.state.last_seen = sighting.rssi, self.clock.now()
        dropped = asyncio.Event()
        client = BleakClient(
            device,
            disconnected_callback=lambda _client: dropped.set(),
            timeout=self.connect_timeout,
            backend=self.backend.client,
        )
        self.client = client
        try:
            # One bound for connect + discovery + subscriptions: a peer that vanishes mid-setup must not
            # leave the link waiting on a request nobody will answer.
            async with asyncio.timeout(self.connect_timeout):
                await client.connect()
                await self._subscribe(client, sink)
            self.state.connected = True
            self.state.connects += 1
            self.state.last_error = None
            log.info("%s: connected", self.address)
            if self.records is not None:
                await self._drain(client, dropped)
            while client.is_connected and not dropped.is_set():
                # Polled as well as evented: some backends report a drop only through is_connected.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await dropped.wait()
            self.state.last_error = "disconnected"
            return True
        finally:
            self.client = None
            if client.is_connected:
                with contextlib.suppress(*LINK_ERRORS):
                    await client.disconnect()

    async def _subscribe(self, client: BleakClient, sink: Sink) -> None:
        services = client.services
        for sub in self.subscriptions:
            char = services.get_characteristic(gatt.uuid128(sub.uuid))
            if char is None:
                if sub.required:
                    raise MissingCharacteristic(f"{self.address} has no characteristic 0x{sub.uuid:04X}")
                continue
            await client.start_notify(char, functools.partial(self._deliver, sink, sub.uuid))
        battery = services.get_characteristic(gatt.uuid128(gatt.BATTERY_LEVEL))
        if self.read_battery and battery is not None:
            if "read" in battery.properties:
                self._deliver(sink, gatt.BATTERY_LEVEL, battery, await client.read_gatt_char(battery))
            if "notify" in battery.properties:
                await client.start_notify(battery, functools.partial(self._deliver, sink, gatt.BATTERY_LEVEL))

    async def _drain(self, client: BleakClient, dropped: asyncio.Event) -> None:
        """Run the RACP procedures that hand over the records stored since the last one taken.

        The measurement characteristics are already subscribed. A drop in the middle raises a link error: the
        records delivered so far are kept (and remembered), the next connection asks from there on.
        """
        assert self.records is not None
        point = client.services.get_characteristic(gatt.uuid128(racp.RACP))
        if point is None:
            return  # no RACP: the device sends its memory by itself when indications are enabled (BLS, WSS)
        answers: asyncio.Queue[racp.Response] = asyncio.Queue()

        def on_racp(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            try:
                answers.put_nowait(racp.parse_response(bytes(data)))
            except racp.RacpError as err:
                log.warning("%s: %s", self.address, err)

        async def ask(request: bytes, want: racp.OpCode) -> racp.Response:
            await client.write_gatt_char(point, request, response=True)
            while True:
                get = asyncio.ensure_future(answers.get())
                gone = asyncio.ensure_future(dropped.wait())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                get.cancel()
                gone.cancel()
                if get not in done:
                    raise BleakError("disconnected during a RACP procedure")
                answer = get.result()
                if answer.op_code == want or answer.op_code == racp.OpCode.RESPONSE_CODE:
                    return answer

        last = self.records.last_sequence
        start = None if last is None else min(last + 1, racp.MAX_SEQUENCE)
        async with asyncio.timeout(self.drain_timeout):
            await client.start_notify(point, on_racp)  # RACP answers are indications
            # Report number of stored records first (0x04 -> 0x05): what the drain should bring, for health.
            count = await ask(
                racp.count_all() if start is None else racp.count_from(start),
                racp.OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
            )
            self.state.stored_records = count.count
            answer = await ask(
                racp.report_all() if start is None else racp.report_from(start), racp.OpCode.RESPONSE_CODE
            )
            if answer.code == racp.ResponseCode.OPERATOR_NOT_SUPPORTED and start is not None:
                # ">=" is optional for some record types: fall back to all records; the RecordLog dedupes.
                answer = await ask(racp.report_all(), racp.OpCode.RESPONSE_CODE)
        self.state.last_drain = answer.describe()
        if not answer.ok:
            # The connection stays up (live values still arrive); the next connection asks again.
            log.warning("%s: report stored records refused: %s", self.address, answer.describe())
            return
        self.state.drains += 1
        log.info("%s: stored records drained (%s)", self.address, answer.describe())

    def health(self) -> dict[str, Any]:
        """The link's health (see :class:`LinkHealth`)."""
        return self.state.as_dict()
