"""Real local services (Mosquitto, InfluxDB) and their process harness; use them through :mod:`provisioning.local`."""
