"""What a device's stored records the gateway has already taken, persisted per device: no record twice.

Devices that keep measurements while out of range hand them over again and again: a glucose meter answers a
RACP "report stored records" with whatever the filter selects, many blood-pressure cuffs and scales re-send
their whole memory every time indications are enabled. :class:`RecordLog` decides, per decoded value,
whether it is new:

- values with a Sequence Number (Glucose Measurement): new iff the number is above the highest one taken
  (the meter numbers records in increasing order; the next drain asks for ``>= last + 1``);
- values with a device Time Stamp but no sequence number (BPM, temperature, weight, body composition, PLX
  spot-check): new iff the exact value (time stamp + every field) was not taken before; the last
  :data:`KEEP_KEYS` keys are remembered;
- values with neither (heart rate, continuous PLX, battery): always new, they are live.

The state is a small JSON file (``{"last_sequence": 17, "keys": ["<sha256>", ...]}``) written atomically
(temporary file + rename) after every new record, so a power cut or a dropped link in the middle of a drain
resumes from the last record actually taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import deque
from pathlib import Path

from drivers.ble.gatt import Decoded, GlucoseMeasurement
from kyojo.runtime.files import atomic_write_text

#: how many (time stamp, values) keys are remembered per device (a cuff stores at most ~100-200 records)
KEEP_KEYS = 1024


class RecordLog:
    """Per-device memory of records already taken; ``path=None`` keeps it in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.last_sequence: int | None = None
        self._keys: deque[str] = deque(maxlen=KEEP_KEYS)
        self._key_set: set[str] = set()
        self.duplicates = 0
        if path is not None and path.exists():
            with contextlib.suppress(ValueError, OSError):  # unreadable state: start over (dedupe by key still)
                state = json.loads(path.read_text(encoding="utf-8"))
                last = state.get("last_sequence")
                self.last_sequence = last if isinstance(last, int) else None
                for key in state.get("keys", [])[-KEEP_KEYS:]:
                    self._remember(str(key))

    def _remember(self, key: str) -> None:
        if len(self._keys) == self._keys.maxlen:
            self._key_set.discard(self._keys[0])
        self._keys.append(key)
        self._key_set.add(key)

    @staticmethod
    def key(uuid: int, data: bytes) -> str:
        """The identity of a record without a sequence number: its characteristic and exact value."""
        return hashlib.sha256(uuid.to_bytes(2, "little") + bytes(data)).hexdigest()[:32]

    def admit(self, uuid: int, value: Decoded, data: bytes) -> bool:
        """True if ``value`` is new (and remember it), False if it was taken before (counted)."""
        if isinstance(value, GlucoseMeasurement):
            seq = value.sequence_number
            if self.last_sequence is not None and seq <= self.last_sequence:
                self.duplicates += 1
                return False
            self.last_sequence = seq
            self._save()
            return True
        if getattr(value, "timestamp", None) is None:
            return True  # a live value: nothing identifies it as a stored record
        key = self.key(uuid, data)
        if key in self._key_set:
            self.duplicates += 1
            return False
        self._remember(key)
        self._save()
        return True

    def _save(self) -> None:
        if self.path is None:
            return
        body = json.dumps({"last_sequence": self.last_sequence, "keys": list(self._keys)})
        atomic_write_text(self.path, body, mode=0o644)
