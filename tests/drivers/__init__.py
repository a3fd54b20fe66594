"""Driver tests against the real simulators on 127.0.0.1, and fault injection."""
