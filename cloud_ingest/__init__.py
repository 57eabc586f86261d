"""Cloud side: the MQTT -> InfluxDB ingester, its InfluxDB writers and line protocol.

Importing this package imports nothing heavy (paho and influxdb-client are imported where they are used).
"""
