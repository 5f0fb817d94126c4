"""Go / no-go per migrated record: the ledger of Route53 steps and the watch that keeps it."""
