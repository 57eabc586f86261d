"""Virtual BLE health devices on Bumble, and bleak backends that reach them: CI and demos without a radio.

:class:`VirtualAir` is an in-process radio: a Bumble ``LocalLink`` with one Bumble ``Controller`` + ``Device``
acting as the gateway's adapter (central) and one per :class:`VirtualPeripheral`. Every peripheral runs a
real GATT server (the profile's service, CCCDs, Battery Service) and advertises its service UUID; values are
delivered as real ATT notifications/indications.

Stored records: :meth:`VirtualPeripheral.record` keeps a measurement in the device's memory (whether or not
the gateway is there). A peripheral with a Record Access Control Point (glucose meters by default, any
profile with ``racp=True``) answers RACP requests over GATT exactly as GLS specifies (records notified or
indicated on the measurement characteristic, then a Response Code indication on the RACP); one without it
re-sends its whole memory each time the gateway enables indications (as many BLS cuffs and scales do).

Security: ``security="bond"`` makes every CCCD (and the RACP) require an encrypted link, so a central must
pair first (ATT "Insufficient Encryption" otherwise); ``pairing_mode=False`` makes the device refuse pairing
(SMP "Pairing Not Supported"), as a real device does outside its pairing mode. Pairing is real Bumble SMP
(LE Secure Connections, Just Works) between the two in-process devices; the keys stay in memory, and the
virtual client re-encrypts with them on later connections (as BlueZ does for a bonded device).

:meth:`VirtualAir.backend` returns bleak backend classes
(a ``BaseBleakScanner`` and a ``BaseBleakClient``) so the production code in :mod:`drivers.ble.transport`
runs unmodified: ``BleakScanner(backend=...)``, ``BleakClient(..., backend=...)``.

Bumble is a development dependency: import this module only from tests, demos and benches. It lives with the
simulators (``drivers/sim``), not in the BLE family it stands in for, so production code never imports it (an
import-linter contract); ``backend = "virtual"`` entries reach it through :mod:`drivers.sim.emit.ble`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakError,
    BleakGATTProtocolError,
)
from bumble import core as bumble_core
from bumble import gatt, pairing
from bumble.att import ATT_Error
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address, HCI_Error
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from drivers.ble import gatt as sig
from drivers.ble import racp as racpc
from drivers.ble.profiles import BATTERY_SERVICE, PROFILES, ProfileName
from drivers.ble.transport import BleBackend

_T = TypeVar("_T")

#: Bumble failures that a real stack reports as link errors
_BUMBLE_ERRORS: tuple[type[BaseException], ...] = (bumble_core.BaseBumbleError, HCI_Error, asyncio.TimeoutError)
#: ATT MTU the virtual central asks for (BlueZ asks for 517; 247 fits one LE data packet with DLE)
VIRTUAL_MTU = 247
#: HCI reason "Remote User Terminated Connection"
REMOTE_USER_TERMINATED = 0x13
#: Glucose Feature (0x2A51, read, mandatory in the Glucose Service)
GLUCOSE_FEATURE = 0x2A51

Security = Literal["none", "bond"]

# Characteristics a real device indicates (acknowledged) rather than notifies, per their service specs.
_INDICATED = frozenset(
    {
        sig.BLOOD_PRESSURE_MEASUREMENT,
        sig.TEMPERATURE_MEASUREMENT,
        sig.PLX_SPOT_CHECK_MEASUREMENT,
        sig.WEIGHT_MEASUREMENT,
        sig.BODY_COMPOSITION_MEASUREMENT,
    }
)

_PROPERTY_NAMES: dict[gatt.Characteristic.Properties, CharacteristicPropertyName] = {
    gatt.Characteristic.Properties.BROADCAST: "broadcast",
    gatt.Characteristic.Properties.READ: "read",
    gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE: "write-without-response",
    gatt.Characteristic.Properties.WRITE: "write",
    gatt.Characteristic.Properties.NOTIFY: "notify",
    gatt.Characteristic.Properties.INDICATE: "indicate",
    gatt.Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES: "authenticated-signed-writes",
    gatt.Characteristic.Properties.EXTENDED_PROPERTIES: "extended-properties",
}


def _uuid_str(u: bumble_core.UUID) -> str:
    """A Bumble UUID as bleak writes UUIDs: 128-bit, lower case."""
    return str(uuidlib.UUID(bytes=bytes(reversed(u.to_bytes(force_128=True)))))


def _bumble_device(link: LocalLink, address: str, name: str) -> Device:
    controller = Controller(name, link=link, public_address=address)
    return Device(name=name, address=Address(address), host=Host(controller, AsyncPipeSink(controller)))


class VirtualAir:
    """An in-process radio: the gateway's virtual adapter plus any number of virtual peripherals."""

    def __init__(self, central_address: str = "F0:F0:F0:F0:F0:F0") -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self.central = _bumble_device(self.link, central_address, "kyojo-gateway")
        self.peripherals: dict[str, VirtualPeripheral] = {}
        self._scanners: list[_VirtualScanner] = []
        self._connect_lock = asyncio.Lock()
        self._started = False
        self._backend: BleBackend | None = None
        #: False = the adapter is switched off (rfkill, "power off"): scans and connections fail like bleak's
        self.powered = True

    async def start(self) -> None:
        """Power the virtual adapter on."""
        if not self._started:
            await self.central.power_on()
            self.central.on(self.central.EVENT_ADVERTISEMENT, self._on_advertisement)
            self._started = True

    async def add(
        self,
        address: str,
        profile: ProfileName,
        *,
        name: str | None = None,
        battery: int | None = 90,
        racp: bool | None = None,
        security: Security = "none",
        pairing_mode: bool = True,
    ) -> VirtualPeripheral:
        """Create, power on and start advertising a peripheral of ``profile``.

        ``racp``: give it a Record Access Control Point (default: glucose meters only). ``security="bond"``:
        CCCDs and RACP need an encrypted (paired) link. ``pairing_mode=False``: it refuses to pair.
        """
        await self.start()
        peripheral = VirtualPeripheral(
            self,
            address.upper(),
            profile,
            name=name or profile,
            battery=battery,
            racp=profile == "glucose" if racp is None else racp,
            security=security,
            pairing_mode=pairing_mode,
        )
        await peripheral.start()
        self.peripherals[peripheral.address] = peripheral
        return peripheral

    def backend(self) -> BleBackend:
        """bleak backend classes bound to this radio (the same pair on every call)."""
        if self._backend is None:
            air = self
            scanner = type("VirtualBleakScanner", (_VirtualScanner,), {"air": air})
            client = type("VirtualBleakClient", (_VirtualClient,), {"air": air})
            self._backend = BleBackend(scanner=scanner, client=client)
        return self._backend

    def check_powered(self) -> None:
        """Raise what bleak raises when the adapter is off (BlueZ: "Bluetooth adapter is not powered")."""
        if not self.powered:
            raise BleakBluetoothNotAvailableError(
                "Bluetooth adapter is powered off", BleakBluetoothNotAvailableReason.POWERED_OFF
            )

    async def _key_names(self, address: str) -> list[str]:
        # Bumble files keys under the peer's address with its type suffix ("C0:00:00:00:00:01/P")
        keystore = self.central.keystore
        if keystore is None:
            return []
        return [name for name, _ in await keystore.get_all() if name.split("/")[0].upper() == address.upper()]

    async def is_bonded(self, address: str) -> bool:
        """Whether the virtual adapter holds pairing keys for ``address``."""
        return bool(await self._key_names(address))

    async def file_keys_for(self, connection: Connection) -> None:
        """Make the bond's keys findable, on both ends, under the peer address as each connection names it.

        SMP files keys under the peer's identity address (``.../P``) while the virtual central connects by a
        random-typed address: a real controller resolves that, Bumble's LocalLink does not.
        """
        pairs = [(self.central, connection)]
        peripheral = self.peripherals.get(str(connection.peer_address).split("/")[0].upper())
        if peripheral is not None:
            pairs += [(peripheral.device, c) for c in peripheral.device.connections.values()]
        for device, conn in pairs:
            keystore = device.keystore
            if keystore is None:
                continue
            bare = str(conn.peer_address).split("/")[0].upper()
            for name, keys in await keystore.get_all():
                if name.split("/")[0].upper() == bare and name != str(conn.peer_address):
                    await keystore.update(str(conn.peer_address), keys)
                    break

    async def forget(self, address: str) -> None:
        """Delete the virtual adapter's pairing keys for ``address``."""
        keystore = self.central.keystore
        for name in await self._key_names(address):
            assert keystore is not None
            await keystore.delete(name)

    async def _scanner_started(self, scanner: _VirtualScanner) -> None:
        self.check_powered()
        await self.start()
        self._scanners.append(scanner)
        if not self.central.is_scanning:
            await self.central.start_scanning(filter_duplicates=False)

    async def _scanner_stopped(self, scanner: _VirtualScanner) -> None:
        if scanner in self._scanners:
            self._scanners.remove(scanner)
        if not self._scanners and self.central.is_scanning:
            await self.central.stop_scanning()

    def _on_advertisement(self, adv: Advertisement) -> None:
        for scanner in list(self._scanners):
            scanner.on_advertisement(adv)

    async def close(self) -> None:
        """Disconnect everything and power every device off."""
        for peripheral in self.peripherals.values():
            with contextlib.suppress(*_BUMBLE_ERRORS):
                await peripheral.go_away()
        if self.central.is_scanning:
            await self.central.stop_scanning()


class VirtualPeripheral:
    """A virtual device of one profile with a real GATT server; :meth:`send` notifies or indicates a value."""

    def __init__(
        self,
        air: VirtualAir,
        address: str,
        profile: ProfileName,
        *,
        name: str,
        battery: int | None,
        racp: bool = False,
        security: Security = "none",
        pairing_mode: bool = True,
    ) -> None:
        self.air = air
        self.address = address
        self.profile = PROFILES[profile]
        self.name = name
        self.security = security
        self.device = _bumble_device(air.link, address, name)
        self.characteristics: dict[int, gatt.Characteristic[bytes]] = {}
        self._subscribed: dict[int, asyncio.Event] = {}
        self._cccds: list[tuple[gatt.Descriptor, gatt.Characteristic[bytes]]] = []
        #: the device's memory: measurement values in the order they were taken
        self.stored: list[bytes] = []
        #: test hook: go out of range after sending this many records of the next RACP report
        self.drop_after_records: int | None = None
        #: values sent in answer to RACP reports (or re-sent from memory), for the tests
        self.records_sent = 0
        self._procedure: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        P = gatt.Characteristic.Properties
        chars = []
        for sub in self.profile.subscriptions:
            props = P.INDICATE if sub.uuid in _INDICATED else P.NOTIFY
            chars.append(self._characteristic(sub.uuid, props, b""))
        if self.profile.service == 0x1808:
            # Glucose Feature: no optional feature bits set (uint16 0)
            chars.append(self._characteristic(GLUCOSE_FEATURE, P.READ, bytes(2)))
        self.has_racp = racp
        if racp:
            # RACP: write (with response) + indicate; GLS requires the requests on an encrypted link when bonded
            perms = gatt.Characteristic.WRITEABLE
            if security == "bond":
                perms |= gatt.Characteristic.WRITE_REQUIRES_ENCRYPTION
            point: gatt.Characteristic[bytes] = gatt.Characteristic(
                f"{racpc.RACP:04X}",
                P.WRITE | P.INDICATE,
                perms,
                gatt.CharacteristicValue(write=self._on_racp_write),
                descriptors=self._cccd_descriptors(),
            )
            self._watch(racpc.RACP, point)
            chars.append(point)
        services = [gatt.Service(f"{self.profile.service:04X}", chars)]
        if battery is not None:
            level = self._characteristic(sig.BATTERY_LEVEL, P.READ | P.NOTIFY, bytes([battery]))
            services.append(gatt.Service(f"{BATTERY_SERVICE:04X}", [level]))
        self.device.add_services(services)
        # CCCDs made here (security="bond") get the server's subscription logic once the server knows them.
        for descriptor, char in self._cccds:
            descriptor.value = self.device.gatt_server.make_descriptor_value(char)
        if not pairing_mode:
            self.device.pairing_config_factory = lambda _connection: pairing.PairingConfig(delegate=_Refuse())
        # Re-advertise after each disconnection while "present" (Bumble's own auto_restart cannot be undone
        # once a connection exists, and go_away() must make the device vanish).
        self.present = False
        self.device.on(self.device.EVENT_CONNECTION, self._on_connection)

    def _on_connection(self, connection: Connection) -> None:
        def restart(_reason: int) -> None:
            if self.present:
                self._spawn(self.advertise())

        connection.once(connection.EVENT_DISCONNECTION, restart)

    def _cccd_descriptors(self) -> list[gatt.Descriptor]:
        """An explicit CCCD that needs encryption to be written (``security="bond"``), else the server's own."""
        if self.security != "bond":
            return []
        perms = gatt.Descriptor.READABLE | gatt.Descriptor.WRITEABLE | gatt.Descriptor.WRITE_REQUIRES_ENCRYPTION
        return [gatt.Descriptor(gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR, perms, bytes(2))]

    def _characteristic(self, uuid16: int, props: gatt.Characteristic.Properties, value: bytes) -> Any:
        P = gatt.Characteristic.Properties
        subscribable = bool(props & (P.NOTIFY | P.INDICATE))
        char: gatt.Characteristic[bytes] = gatt.Characteristic(
            f"{uuid16:04X}",
            props,
            gatt.Characteristic.READABLE,
            value,
            descriptors=self._cccd_descriptors() if subscribable else [],
        )
        self._watch(uuid16, char)
        return char

    def _watch(self, uuid16: int, char: gatt.Characteristic[bytes]) -> None:
        event = self._subscribed[uuid16] = asyncio.Event()
        for descriptor in char.descriptors:
            self._cccds.append((descriptor, char))

        def on_subscription(_bearer: object, notify: bool, indicate: bool) -> None:
            if notify or indicate:
                event.set()
                if indicate and not self.has_racp and uuid16 == self.profile.subscriptions[0].uuid:
                    # No RACP: like many BLS cuffs and scales, send the whole memory once indications are on.
                    self._spawn(self._send_memory())
            else:
                event.clear()

        char.on(char.EVENT_SUBSCRIPTION, on_subscription)
        self.characteristics[uuid16] = char

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- stored records ----------------------------------------------------------------------------------------

    @property
    def measurement(self) -> int:
        """The characteristic that carries the profile's measurements (and stored records)."""
        return self.profile.subscriptions[0].uuid

    async def record(self, value: bytes, *, live: bool = False) -> None:
        """Take a measurement: keep it in memory; with ``live`` also send it now if the gateway listens."""
        self.stored.append(bytes(value))
        if live and self.connected and self._subscribed[self.measurement].is_set():
            await self.send(self.measurement, value)

    @staticmethod
    def _sequence(value: bytes) -> int:
        # Glucose Measurement: Flags (uint8) then Sequence Number (uint16)
        return int.from_bytes(value[1:3], "little")

    async def _send_record(self, value: bytes) -> bool:
        """Send one stored record; False if the device "went out of range" instead (test hook)."""
        if self.drop_after_records is not None:
            if self.drop_after_records <= 0:
                self.drop_after_records = None
                await self.drop()
                return False
            self.drop_after_records -= 1
        await self.send(self.measurement, value)
        self.records_sent += 1
        return True

    async def _send_memory(self) -> None:
        with contextlib.suppress(*_BUMBLE_ERRORS):
            for value in list(self.stored):
                if not self.connected or not await self._send_record(value):
                    return

    def _on_racp_write(self, _connection: object, value: bytes) -> None:
        """RACP write handler: validate, then run the procedure after the Write Response."""
        if self._procedure is not None and not self._procedure.done():
            raise ATT_Error(racpc.ATT_PROCEDURE_ALREADY_IN_PROGRESS)
        if not self._subscribed[racpc.RACP].is_set():
            raise ATT_Error(racpc.ATT_CCCD_IMPROPERLY_CONFIGURED)
        self._procedure = self._spawn(self._racp_procedure(bytes(value)))

    def _select(self, request: racpc.Request) -> list[bytes] | racpc.ResponseCode:
        """The stored records a Report/Number request selects, or the Response Code that refuses it."""
        records = self.stored
        if request.operator == racpc.Operator.ALL_RECORDS:
            return list(records) if not request.operand else racpc.ResponseCode.INVALID_OPERAND
        if request.operator in (racpc.Operator.FIRST_RECORD, racpc.Operator.LAST_RECORD):
            if request.operand:
                return racpc.ResponseCode.INVALID_OPERAND
            if not records:
                return []
            return [records[0] if request.operator == racpc.Operator.FIRST_RECORD else records[-1]]
        if request.operator in (racpc.Operator.GREATER_THAN_OR_EQUAL, racpc.Operator.LESS_THAN_OR_EQUAL):
            if self.profile.service != 0x1808:
                return racpc.ResponseCode.OPERATOR_NOT_SUPPORTED  # records without a Sequence Number
            if request.operand[:1] and request.operand[0] != racpc.FilterType.SEQUENCE_NUMBER:
                return racpc.ResponseCode.OPERAND_NOT_SUPPORTED
            bound = request.sequence_filter()
            if bound is None:
                return racpc.ResponseCode.INVALID_OPERAND
            if request.operator == racpc.Operator.GREATER_THAN_OR_EQUAL:
                return [r for r in records if self._sequence(r) >= bound]
            return [r for r in records if self._sequence(r) <= bound]
        if request.operator in (racpc.Operator.NULL, racpc.Operator.WITHIN_RANGE):
            return racpc.ResponseCode.OPERATOR_NOT_SUPPORTED
        return racpc.ResponseCode.INVALID_OPERATOR

    async def _racp_procedure(self, data: bytes) -> None:
        point = self.characteristics[racpc.RACP]
        with contextlib.suppress(*_BUMBLE_ERRORS):
            try:
                request = racpc.parse_request(data)
            except racpc.RacpError:
                # too short to carry an operator: answer for the op code we got, if any
                op = data[0] if data else 0
                await self.device.indicate_subscribers(
                    point, racpc.response_code(op, racpc.ResponseCode.INVALID_OPERATOR)
                )
                return
            op = request.op_code
            if op not in (racpc.OpCode.REPORT_STORED_RECORDS, racpc.OpCode.REPORT_NUMBER_OF_STORED_RECORDS):
                # Delete and Abort are not modelled (nothing to abort: a report runs to its end)
                await self.device.indicate_subscribers(
                    point, racpc.response_code(op, racpc.ResponseCode.OP_CODE_NOT_SUPPORTED)
                )
                return
            selected = self._select(request)
            if isinstance(selected, racpc.ResponseCode):
                await self.device.indicate_subscribers(point, racpc.response_code(op, selected))
                return
            if op == racpc.OpCode.REPORT_NUMBER_OF_STORED_RECORDS:
                await self.device.indicate_subscribers(point, racpc.number_of_records(len(selected)))
                return
            for value in selected:
                if not await self._send_record(value):
                    return  # gone mid-report: no Response Code (the procedure did not complete)
            code = racpc.ResponseCode.SUCCESS if selected else racpc.ResponseCode.NO_RECORDS_FOUND
            await self.device.indicate_subscribers(point, racpc.response_code(op, code))

    async def start(self) -> None:
        """Power on and advertise (again after every disconnection)."""
        if not self.device.powered_on:
            await self.device.power_on()
        await self.advertise()

    async def advertise(self) -> None:
        """Advertise name and the profile's 16-bit service UUID, connectable, every 20 ms."""
        data = AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),  # LE General Discoverable, BR/EDR not supported
                (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                (
                    AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                    self.profile.service.to_bytes(2, "little"),
                ),
            ]
        )
        self.present = True
        if self.device.is_advertising:
            return
        await self.device.start_advertising(
            advertising_data=bytes(data), advertising_interval_min=20, advertising_interval_max=20
        )

    @property
    def connected(self) -> bool:
        """Whether the gateway is connected to this peripheral."""
        return bool(self.device.connections)

    async def wait_subscribed(self, uuid16: int, within_s: float = 5.0) -> None:
        """Wait until the gateway has enabled notifications/indications on ``uuid16``."""
        async with asyncio.timeout(within_s):
            await self._subscribed[uuid16].wait()

    async def send(self, uuid16: int, value: bytes) -> None:
        """Notify or indicate ``value`` (as the characteristic's properties say) to every subscriber."""
        char = self.characteristics[uuid16]
        char.value = value
        if char.properties & gatt.Characteristic.Properties.INDICATE:
            await self.device.indicate_subscribers(char, value)
        else:
            await self.device.notify_subscribers(char, value)

    async def set_battery(self, level: int) -> None:
        """Change the Battery Level and notify it."""
        await self.send(sig.BATTERY_LEVEL, bytes([level]))

    async def drop(self) -> None:
        """The peripheral terminates the connection (out of range, switched off, measurement done)."""
        for event in self._subscribed.values():
            event.clear()
        for connection in list(self.device.connections.values()):
            await connection.disconnect(REMOTE_USER_TERMINATED)

    async def go_away(self) -> None:
        """Stop advertising and disconnect: the gateway can neither see nor reach the device."""
        self.present = False
        if self.device.is_advertising:
            await self.device.stop_advertising()
        await self.drop()


# ------------------------------------------------------------------------------------------------------------
# bleak backends
# ------------------------------------------------------------------------------------------------------------


class _VirtualScanner(BaseBleakScanner):
    """``BaseBleakScanner`` over the virtual adapter."""

    air: ClassVar[VirtualAir]

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)

    async def start(self) -> None:
        self.seen_devices = {}
        await self.air._scanner_started(self)

    async def stop(self) -> None:
        await self.air._scanner_stopped(self)

    def on_advertisement(self, adv: Advertisement) -> None:
        data = adv.data
        uuids: list[str] = []
        for kind in (
            AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        ):
            for group in data.get_all(kind):
                uuids.extend(_uuid_str(u) for u in group)
        uuids = list(dict.fromkeys(uuids))
        if not self.is_allowed_uuid(uuids):
            return
        name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
        address = str(adv.address).split("/")[0]
        adv_data = AdvertisementData(
            local_name=name if isinstance(name, str) else None,
            manufacturer_data={},
            service_data={},
            service_uuids=uuids,
            tx_power=None,
            rssi=adv.rssi,
            platform_data=(adv,),
        )
        device = self.create_or_update_device(address, address, adv_data.local_name, adv.address, adv_data)
        self.call_detection_callbacks(device, adv_data)


class _VirtualClient(BaseBleakClient):
    """``BaseBleakClient`` over the virtual adapter: a Bumble GATT client on a real (virtual) LE link."""

    air: ClassVar[VirtualAir]

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._gone: asyncio.Future[None] | None = None  # resolved when the link drops
        self._closing = False

    @property
    def name(self) -> str:
        peripheral = self.air.peripherals.get(self.address.upper())
        return peripheral.name if peripheral else self.address

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        self.air.check_powered()
        await self.air.start()
        try:
            # A Bumble central (like most controllers) makes one LE connection attempt at a time.
            async with self.air._connect_lock:
                connection = await self.air.central.connect(Address(self.address), timeout=self._timeout)
            connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
            self._connection = connection
            self._gone = asyncio.get_running_loop().create_future()
            peer = self._peer = Peer(connection)
            # BlueZ and CoreBluetooth exchange the ATT MTU right after connecting; values longer than 20
            # bytes (body composition, PLX with all fields) need it.
            if await self.air.is_bonded(self.address):
                # Bonded: start encryption with the stored LTK straight away, as BlueZ does.
                await self.air.file_keys_for(connection)
                await self._op("encryption", self.air.central.encrypt(connection))
            await self._op("MTU exchange", peer.request_mtu(VIRTUAL_MTU))
            await self._op("service discovery", peer.discover_all())  # type: ignore[no-untyped-call]
            self.services = self._collection(peer)
        except BleakError:
            await self._abort()
            raise
        except _BUMBLE_ERRORS as err:
            await self._abort()
            raise BleakError(f"connect to {self.address} failed: {err}") from err

    async def _abort(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*_BUMBLE_ERRORS):
                await self._connection.disconnect()
        self._connection = None

    def _collection(self, peer: Peer) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        for service in peer.services:
            bservice = BleakGATTService(service, service.handle, _uuid_str(service.uuid))
            collection.add_service(bservice)
            for char in service.characteristics:
                props: list[CharacteristicPropertyName] = [
                    name for flag, name in _PROPERTY_NAMES.items() if char.properties & flag
                ]
                bchar = BleakGATTCharacteristic(
                    char, char.handle, _uuid_str(char.uuid), props, lambda: self.mtu_size - 3, bservice
                )
                collection.add_characteristic(bchar)
                for desc in char.descriptors:
                    collection.add_descriptor(BleakGATTDescriptor(desc, desc.handle, _uuid_str(desc.type), bchar))
        return collection

    def _on_disconnection(self, _reason: int) -> None:
        self._connection = None
        self._peer = None
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if not self._closing and self._disconnected_callback is not None:
            self._disconnected_callback()

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError("Not connected")
        return self._peer

    async def _op(self, what: str, coro: Awaitable[_T]) -> _T:
        """Run one GATT operation; fail it (as BlueZ does) if the link drops before the answer arrives."""
        if self._peer is None or self._gone is None:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise BleakError("Not connected")
        op = asyncio.ensure_future(coro)
        waiting: set[asyncio.Future[Any]] = {op, self._gone}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            op.cancel()
            raise
        if op not in done:
            op.cancel()
            raise BleakError(f"{what}: disconnected")
        try:
            return op.result()
        except ATT_Error as err:
            # an ATT Error Response, as bleak 3 reports them on every platform
            raise BleakGATTProtocolError(err.error_code) from err
        except _BUMBLE_ERRORS as err:
            raise BleakError(f"{what} failed: {err}") from err

    async def disconnect(self) -> None:
        if self._connection is None:
            return
        self._closing = True
        try:
            await self._connection.disconnect()
        except _BUMBLE_ERRORS as err:
            raise BleakError(f"disconnect failed: {err}") from err
        finally:
            self._connection = None
            self._peer = None
            self._closing = False

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Bond: real SMP pairing (LE Secure Connections, Just Works) with the peripheral; keys kept in memory."""
        if self._connection is None:
            raise BleakError("Not connected")
        await self._op("pairing", self.air.central.pair(self._connection))

    async def unpair(self) -> None:
        """Forget the bond (and disconnect, as bleak's BlueZ backend does)."""
        await self.disconnect()
        await self.air.forget(self.address)

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        proxy: CharacteristicProxy[bytes] = characteristic.obj
        peer = self._require_peer()
        return bytearray(await self._op(f"read {characteristic.uuid}", peer.read_value(proxy)))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._require_peer()
        return bytearray(await self._op("read descriptor", peer.read_value(descriptor.handle)))

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool) -> None:
        peer = self._require_peer()
        await self._op(
            f"write {characteristic.uuid}", peer.write_value(characteristic.obj, bytes(data), with_response=response)
        )

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        peer = self._require_peer()
        await self._op("write descriptor", peer.write_value(descriptor.handle, bytes(data), with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        proxy: CharacteristicProxy[bytes] = characteristic.obj

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        peer = self._require_peer()
        # Writes the CCCD: notifications when the characteristic supports them, else indications.
        await self._op(f"subscribe {characteristic.uuid}", peer.subscribe(proxy, deliver, prefer_notify=True))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._require_peer()
        await self._op(f"unsubscribe {characteristic.uuid}", peer.unsubscribe(characteristic.obj))


class _Refuse(pairing.PairingDelegate):
    """A device outside its pairing mode: every pairing request is refused."""

    async def accept(self) -> bool:
        return False


__all__ = ["REMOTE_USER_TERMINATED", "VirtualAir", "VirtualPeripheral"]
