"""On-site acceptance: ``kyojo doctor`` checks (pure functions + a one-screen report) and hardware tests."""
