"""Process-level helpers every part may use (stdlib only): durable files, backoff, sd_notify, clocks.

A leaf like :mod:`kyojo.contract`: it imports no other Kyojo package.
"""
