"""Several replicas on one database: leases for devices and leadership, events on every replica."""
