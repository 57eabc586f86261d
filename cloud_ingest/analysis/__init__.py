"""The analyst queries in parts (registry, grafana, run, plot, cli); use them through :mod:`cloud_ingest.analyst`."""
