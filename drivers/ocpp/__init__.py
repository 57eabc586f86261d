"""OCPP 1.6J: the gateway's local central system for household and site chargers.

- :mod:`drivers.ocpp.normalise` sans-IO: MeterValues / transactionData -> Readings, charger quirks table.
- :mod:`drivers.ocpp.protocol` sans-IO: OCPP-J frame classification and lenient payload parsers, with the
  OCPP 1.6 CALLERROR code for each kind of malformed input.
- :mod:`drivers.ocpp.sessions` SQLite store of transactions (ids survive restarts).
- :mod:`drivers.ocpp.server` the central system on the ``ocpp`` library + ``websockets``.
- :mod:`drivers.ocpp.device` ``kind = "ocpp"`` for the agent; :mod:`drivers.ocpp.cli` ``kyojo ocpp``.
"""
