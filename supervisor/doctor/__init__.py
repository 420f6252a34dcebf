"""Troubleshooting: the facts gathered from the system and a probe process (facts, probe),
and the checks that judge them (checks)."""
