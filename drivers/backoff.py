"""Reconnect backoff for the transports (MQTT publisher, serial, BLE, drivers): :class:`kyojo.runtime.backoff.Backoff`.

Re-exported here for the many importers; the implementation (exponential, jittered into ``[d/2, d]``,
injectable ``rng``) lives in :mod:`kyojo.runtime.backoff`, shared with the cloud's retry loops.
"""

from __future__ import annotations

from kyojo.runtime.backoff import Backoff

__all__ = ["Backoff"]
