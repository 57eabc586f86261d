"""Device families: a sans-IO parser and an I/O transport per family, plus simulators in ``drivers.sim``.

Importing ``drivers`` imports nothing heavy: each family is imported only when a gateway configures it.
"""
