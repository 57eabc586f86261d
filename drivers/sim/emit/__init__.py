"""Simulator emitters: the deterministic simulators of :mod:`drivers.sim` turned into real protocol traffic,
so the demo and the tests run the production drivers instead of injecting readings.

=========================  ==========================================  ===========================================
simulator                  emitted as                                  read by (``kind``)
=========================  ==========================================  ===========================================
household plugs            Tasmota ``tele/<t>/SENSOR``, Shelly Gen2    ``plugs``: :class:`drivers.plugs.mqtt.
                           ``NotifyStatus``, Zigbee2MQTT state, on     PlugsDriver` on the same broker
                           the home's LAN-side Mosquitto
                           (:mod:`.plugs`)
whole-home meter           ECHONET Lite Get_Res in ``ERXUDP`` from an  ``bmeter``: :class:`drivers.meter.driver.
                           emulated BP35A1 on a pty (:mod:`.meter`,    BRouteMeter` on the pty (stable symlink)
                           :mod:`drivers.meter.emulator`)
garbage truck              NMEA GGA+RMC+VTG at 1 Hz on a pty           ``gnss``: :class:`drivers.gnss.transport.
                           (:mod:`.nmea`)                              SerialNmeaSource` (``accept_simulated``)
heart-rate straps          Heart Rate Measurement notifications from   ``ble`` with ``backend = "virtual"``
                           Bumble virtual peripherals in the agent     (demo/test backend, :mod:`.ble`)
                           process (:mod:`.ble`)
=========================  ==========================================  ===========================================

Time: the drivers stamp what they receive with the gateway agent's clock (``BuildContext.clock``; GNSS fixes
carry their own UTC time). The emitters therefore run on the *same* simulated time: in the agent process (BLE)
they use its clock; in another process (the demo's) they use :class:`.clock.AnchoredClock`, built from the
agent's status file (its simulated time at a wall-clock instant), so a device's state for simulated time ``t``
is on the wire when the agent's clock reads ``t``.
"""

from drivers.sim.emit.clock import AnchoredClock, clock_of_agent

__all__ = ["AnchoredClock", "clock_of_agent"]
