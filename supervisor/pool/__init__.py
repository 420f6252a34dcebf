"""Worker supervision: the slots and their restart policy (lifecycle, pool), spawning
workers through the spawn context (spawner), the standby worker (spare), and finding stale
workers of daemons that are gone (stale)."""
