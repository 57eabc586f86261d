"""Virtual BLE health devices on Bumble, and bleak backends that reach them: CI and demos without a radio.

:class:`VirtualAir` is an in-process radio: a Bumble ``LocalLink`` with one Bumble ``Controller`` + ``Device``
acting as the gateway's adapter (central) and one per :class:`VirtualPeripheral`. Every peripheral runs a
real GATT server (the profile's service, CCCDs, Battery Service) and advertises its service UUID; values are
delivered as real ATT notifications/indications. :meth:`VirtualAir.backend` returns bleak backend classes
(a ``BaseBleakScanner`` and a ``BaseBleakClient``) so the production code in :mod:`drivers.ble.transport`
runs unmodified: ``BleakScanner(backend=...)``, ``BleakClient(..., backend=...)``.

Bumble is a development dependency: import this module only from tests, demos and benches.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble import core as bumble_core
from bumble import gatt
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address, HCI_Error
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from drivers.ble import gatt as sig
from drivers.ble.profiles import BATTERY_SERVICE, PROFILES, ProfileName
from drivers.ble.transport import BleBackend

_T = TypeVar("_T")

#: Bumble failures that a real stack reports as link errors
_BUMBLE_ERRORS: tuple[type[BaseException], ...] = (bumble_core.BaseBumbleError, HCI_Error, asyncio.TimeoutError)
#: ATT MTU the virtual central asks for (BlueZ asks for 517; 247 fits one LE data packet with DLE)
VIRTUAL_MTU = 247
#: HCI reason "Remote User Terminated Connection"
REMOTE_USER_TERMINATED = 0x13

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

    async def start(self) -> None:
        """Power the virtual adapter on."""
        if not self._started:
            await self.central.power_on()
            self.central.on(self.central.EVENT_ADVERTISEMENT, self._on_advertisement)
            self._started = True

    async def add(
        self, address: str, profile: ProfileName, *, name: str | None = None, battery: int | None = 90
    ) -> VirtualPeripheral:
        """Create, power on and start advertising a peripheral of ``profile``."""
        await self.start()
        peripheral = VirtualPeripheral(self, address.upper(), profile, name=name or profile, battery=battery)
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

    async def _scanner_started(self, scanner: _VirtualScanner) -> None:
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

    def __init__(self, air: VirtualAir, address: str, profile: ProfileName, *, name: str, battery: int | None) -> None:
        self.air = air
        self.address = address
        self.profile = PROFILES[profile]
        self.name = name
        self.device = _bumble_device(air.link, address, name)
        self.characteristics: dict[int, gatt.Characteristic[bytes]] = {}
        self._subscribed: dict[int, asyncio.Event] = {}
        P = gatt.Characteristic.Properties
        chars = []
        for sub in self.profile.subscriptions:
            props = P.INDICATE if sub.uuid in _INDICATED else P.NOTIFY
            chars.append(self._characteristic(sub.uuid, props, b""))
        services = [gatt.Service(f"{self.profile.service:04X}", chars)]
        if battery is not None:
            level = self._characteristic(sig.BATTERY_LEVEL, P.READ | P.NOTIFY, bytes([battery]))
            services.append(gatt.Service(f"{BATTERY_SERVICE:04X}", [level]))
        self.device.add_services(services)
        # Re-advertise after each disconnection while "present" (Bumble's own auto_restart cannot be undone
        # once a connection exists, and go_away() must make the device vanish).
        self.present = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.device.on(self.device.EVENT_CONNECTION, self._on_connection)

    def _on_connection(self, connection: Connection) -> None:
        def restart(_reason: int) -> None:
            if self.present:
                task = asyncio.get_running_loop().create_task(self.advertise())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        connection.once(connection.EVENT_DISCONNECTION, restart)

    def _characteristic(self, uuid16: int, props: gatt.Characteristic.Properties, value: bytes) -> Any:
        char: gatt.Characteristic[bytes] = gatt.Characteristic(
            f"{uuid16:04X}", props, gatt.Characteristic.READABLE, value
        )
        event = self._subscribed[uuid16] = asyncio.Event()

        def on_subscription(_bearer: object, notify: bool, indicate: bool) -> None:
            if notify or indicate:
                event.set()
            else:
                event.clear()

        char.on(char.EVENT_SUBSCRIPTION, on_subscription)
        self.characteristics[uuid16] = char
        return char

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
        await asyncio.wait_for(self._subscribed[uuid16].wait(), within_s)

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
        raise BleakError("pairing is not implemented by the virtual backend")

    async def unpair(self) -> None:
        raise BleakError("pairing is not implemented by the virtual backend")

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


__all__ = ["REMOTE_USER_TERMINATED", "VirtualAir", "VirtualPeripheral"]
