"""Provisioning: CA, gateway identity, enrollment, broker config, and local service harnesses."""
