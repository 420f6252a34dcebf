"""The configuration: its settings and their checks (settings), the TOML file and the
DOCBRAIN_* environment (config), and the environment guards every process gets (envguard).
A leaf: it imports only supervisor.proto."""
