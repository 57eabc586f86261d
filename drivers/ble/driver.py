"""The BLE driver the agent runs: a :class:`~drivers.ble.transport.Link` feeding the sans-IO decoders."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from drivers.ble import gatt
from drivers.ble.convert import to_readings
from drivers.ble.errors import BleParseError
from drivers.ble.records import RecordLog
from drivers.ble.transport import Link
from drivers.logs import LogLimiter
from kyojo.contract.vocab import Clock, Reading

log = logging.getLogger(__name__)

#: values waiting to be decoded; beyond this the oldest is dropped and counted (the agent fell behind)
QUEUE_MAX = 1000


class BleDriver:
    """``kyojo.contract.vocab.Driver`` for one BLE health device.

    ``subject`` receives the Readings. A device shared by several people reports a User ID (BPM, weight,
    body composition); with ``user_subjects`` set, a value whose User ID is not in the map is held back
    (counted as ``unmapped_user``) rather than filed under the wrong person.

    ``records`` (normally the link's own :class:`RecordLog`) drops stored records the gateway already took:
    a meter drained again, a cuff re-sending its memory. They are counted as ``flagged["duplicate"]``.
    """

    def __init__(
        self,
        device_id: str,
        subject: str,
        link: Link,
        clock: Clock,
        *,
        user_subjects: Mapping[int, str] | None = None,
        lenient: bool = False,
        records: RecordLog | None = None,
    ) -> None:
        self.device_id = device_id
        self.subject = subject
        self.link = link
        self.clock = clock
        self.user_subjects = dict(user_subjects or {})
        self.lenient = lenient
        self.records = records if records is not None else link.records
        self.parse_errors: Counter[str] = Counter()
        self.flagged: Counter[str] = Counter()
        #: values decoded although they carry a value reserved for future use, by ``0xUUID:field``
        self.reserved_values: Counter[str] = Counter()
        self._log_limited = LogLimiter(log)
        self.dropped = 0
        self.readings_out = 0

    def health(self) -> Mapping[str, object]:
        """Link health plus decode counters."""
        return {
            **self.link.health(),
            "device": self.device_id,
            "readings": self.readings_out,
            "parse_errors": dict(self.parse_errors),
            "flagged": dict(self.flagged),
            "reserved_values": dict(self.reserved_values),
            "dropped": self.dropped,
        }

    def decode(self, uuid: int, data: bytes, ts: float) -> list[Reading]:
        """Decode one value into Readings; parse errors and held-back values are counted and logged once."""
        try:
            value = gatt.decode(uuid, data, lenient=self.lenient)
        except BleParseError as err:
            err.device = self.device_id
            key = f"0x{uuid:04X}:{err.reason}"
            if not self.parse_errors[key]:
                # the cause, the characteristic and the length; never the bytes, which hold the measurement
                log.warning(
                    "%s: 0x%04X value refused: %s: %s (%d bytes)",
                    self.device_id,
                    uuid,
                    err.reason,
                    err.detail,
                    len(data),
                )
            self.parse_errors[key] += 1
            return []
        for name in gatt.reserved_values(value):
            # A device of a later service revision: the value is kept; say so once per cause, rate-limited.
            key = f"0x{uuid:04X}:{name}"
            self.reserved_values[key] += 1
            self._log_limited(
                logging.INFO, key, "%s: 0x%04X carries a reserved value in %s (kept)", self.device_id, uuid, name
            )
        if self.records is not None and not self.records.admit(uuid, value, data):
            self.flagged["duplicate"] += 1
            return []
        subject = self.subject
        user: Any = getattr(value, "user_id", None)
        if self.user_subjects and user is not None:
            if user not in self.user_subjects:
                self.flagged["unmapped_user"] += 1
                return []
            subject = self.user_subjects[user]
        conv = to_readings(value, device=self.device_id, subject=subject, ts=ts)
        for flag in conv.flagged:
            key = f"{flag.metric}:{flag.reason}"
            if not self.flagged[key]:
                log.info("%s: held back a %s value (%s)", self.device_id, flag.metric, flag.reason)  # not the value
            self.flagged[key] += 1
        self.readings_out += len(conv.readings)
        return list(conv.readings)

    async def readings(self) -> AsyncIterator[Reading]:
        """Run the link and yield Readings as values arrive (forever; cancel to stop)."""
        queue: asyncio.Queue[tuple[int, bytes, float]] = asyncio.Queue(QUEUE_MAX)

        def sink(uuid: int, data: bytes, ts: float) -> None:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait((uuid, data, ts))

        task = asyncio.create_task(self.link.run(sink), name=f"ble-link-{self.device_id}")
        get: asyncio.Future[tuple[int, bytes, float]] | None = None
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    task.result()  # the link died: re-raise what killed it to the agent's supervisor
                    raise RuntimeError("BLE link stopped")  # unreachable: Link.run never returns
                for reading in self.decode(*get.result()):
                    yield reading
        finally:
            if get is not None:
                get.cancel()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
