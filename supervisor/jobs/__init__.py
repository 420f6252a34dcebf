"""The job queue: the broker between clients and workers (broker), which worker slot holds
which job (held), and the store that keeps every accepted job (store: the interface;
sqlite: the first store, on the journal). The broker's checks (checks) and the answers to
`jobs` and `job ID` (query) are functions of these."""
