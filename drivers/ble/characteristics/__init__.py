"""The SIG health characteristics, one module per profile family; use them through :mod:`drivers.ble.gatt`."""
