"""The git port: the ledger over a bare repository (and an in-memory twin),
plumbing readers, ssh connection sharing."""
