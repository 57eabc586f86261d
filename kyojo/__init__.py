"""Kyojo's glue: the shared contract (:mod:`kyojo.contract`), process helpers (:mod:`kyojo.runtime`), the gateway's
key store (:mod:`kyojo.keys`), the root ``kyojo`` command (:mod:`kyojo.cli`) and the developer's stack
(:mod:`kyojo.devstack`)."""
