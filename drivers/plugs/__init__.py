"""Smart plugs over local MQTT: Tasmota, Shelly Gen1, Shelly Gen2/3/4 and Zigbee2MQTT.

- :mod:`drivers.plugs.parse`: sans-IO decoders (topic + payload bytes -> readings, states, announcements).
- :mod:`drivers.counter`: monotonic energy counters over resetting device counters.
- :mod:`drivers.plugs.session`: appliance mapping, counters, discovery records (stateful, no I/O).
- :mod:`drivers.plugs.mqtt`: the paho-mqtt transport (:class:`~drivers.plugs.mqtt.PlugsDriver`).
- :mod:`drivers.plugs.device`: ``kind = "plugs"`` config and ``build``; :mod:`drivers.plugs.cli`: CLI commands.
"""
