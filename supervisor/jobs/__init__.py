"""The job queue: the broker between clients and workers (broker), the jobs workers hold
(jobqueue), and the store that keeps every accepted job (store: the seam; journal: SQLite)."""
