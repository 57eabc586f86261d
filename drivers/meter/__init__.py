"""The Japanese low-voltage smart meter over the B-route (Wi-SUN, SKSTACK IP, ECHONET Lite).

- :mod:`drivers.meter.echonet`: sans-IO ECHONET Lite frame codec and the 0x0288 property decoders.
- :mod:`drivers.meter.smartmeter`: meter frames -> Readings (coefficient, unit, roll-over).
- :mod:`drivers.meter.skstack`: SKSTACK IP line parsing, command/response and the B-route procedure.
- :mod:`drivers.meter.driver`: :class:`~drivers.meter.driver.BRouteMeter`, the async Driver.
- :mod:`drivers.meter.device`: ``kind = "bmeter"`` config and ``build``; :mod:`drivers.meter.cli`: CLI.
"""
