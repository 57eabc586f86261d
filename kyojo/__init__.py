"""Kyojo's glue: the shared contract (:mod:`kyojo.contract`) and the root ``kyojo`` command (:mod:`kyojo.cli`)."""
