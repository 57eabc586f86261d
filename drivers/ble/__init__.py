"""Bluetooth Low Energy health devices (Bluetooth SIG GATT profiles).

- :mod:`drivers.ble.ieee11073`, :mod:`drivers.ble.gatt`, :mod:`drivers.ble.convert`: the sans-IO part
  (bytes in, frozen dataclasses and Readings out). They import neither bleak nor asyncio.
- :mod:`drivers.ble.transport` / :mod:`drivers.ble.driver`: the I/O on bleak (scan, connect, subscribe,
  reconnect), imported only when a gateway configures ``kind = "ble"``.
- :mod:`drivers.ble.racp` (sans-IO Record Access Control Point) and :mod:`drivers.ble.records` (what stored
  records were already taken, per device): draining devices that measure while out of range.
- :mod:`drivers.ble.pair` (``kyojo pair``) and :mod:`drivers.ble.paired` (the gateway's registry of paired
  devices, ``<data_dir>/ble-devices.json``, and :func:`~drivers.ble.paired.device_configs` for the agent).

The test double (virtual BLE peripherals on Bumble and a bleak backend that reaches them, for tests and demos
without a radio) is :mod:`drivers.sim.virtual_ble`: it depends on this family, never the reverse.
"""
