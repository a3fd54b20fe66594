"""Device I/O: drivers, point maps and supervisors. Knows nothing of the database or HTTP."""
