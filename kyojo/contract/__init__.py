"""The neutral language every part shares: vocabulary (:mod:`.vocab`), errors (:mod:`.errors`) and the wire
contract (:mod:`.wire`, with ``purposes.json``, the purpose catalog gateways and cloud both read).

A leaf: it imports only the standard library, pydantic and orjson, never another Kyojo package.
"""
