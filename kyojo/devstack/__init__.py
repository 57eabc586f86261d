"""The developer's stack: ``kyojo demo`` starts a whole city on one machine (broker, database, gateways on
simulated devices, the ingester). It sits next to the root command, outside the parts it starts: it may import
any of them, the simulators included (the one exception to the simulator contract), and none imports it.
"""
