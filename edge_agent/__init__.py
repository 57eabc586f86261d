"""The gateway daemon: config, bus, raw store, aggregator, consent gate, outbox, publisher, CLI."""
