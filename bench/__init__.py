"""`make bench`: the ledger measured against its physical limit and a SQLite
queue, side by side in one run (issue 7). See bench/README.md."""
