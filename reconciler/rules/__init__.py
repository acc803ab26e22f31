"""Server-side rules: validation of pushes, the re-check, init of a ledger."""
