"""The chaos harness: worker "hosts" in network namespaces, overlapping faults on a seeded
schedule, invariants checked from a ledger the jobs write. Run it with ``scripts/chaos``."""
