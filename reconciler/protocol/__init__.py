"""The shared protocol: schema, manifest, state machine, identity, access,
trailers, eligibility. Pure: no git, no store, no daemon; the hook imports it."""
