"""Watch-over (見守り): a person living alone shows no sign of life for longer than is normal for that hour.

:mod:`.rhythm` learns the home's rhythm and scores quiet time (stdlib only); :mod:`.evaluate` is the protocol
of the model card (absences cut into real households' meter data). The agent's processor is
``edge_agent.processors.watchover``.
"""
