"""GNSS receivers on garbage trucks: NMEA 0183 over serial (or gpsd), fixes, and the truck logic on top.

- :mod:`drivers.gnss.nmea`: sans-IO parser, stream decoder and fix assembler (bytes -> sentences -> fixes).
- :mod:`drivers.gnss.gpsd_json`: sans-IO decoding of gpsd's TPV/SKY JSON reports.
- :mod:`drivers.gnss.transport`: ``SerialNmeaSource`` (pyserial, baud auto-detection, reconnects) and
  ``GpsdSource`` (gpsd's JSON socket).
- :mod:`drivers.gnss.truck`: uplink thinning, stop detection, collection-point matching, pickups, route progress.
- :mod:`drivers.gnss.device`: the ``gnss`` device kind (``Config``, ``build``, ``GnssDriver``).
- :mod:`drivers.gnss.cli`: ``kyojo gnss replay``.

Importing this package imports nothing heavy; pyserial is imported by ``transport`` only.
"""
