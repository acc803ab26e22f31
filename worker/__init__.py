"""trainledger worker: detect capability, claim, train, heartbeat, store."""
