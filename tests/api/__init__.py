"""API tests: the app in process with a real PostgreSQL, identity, audit, signatures, protocol, alarms and setpoints."""
