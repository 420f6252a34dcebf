"""The configuration: its settings (settings), what their values may be and what of them
may be shown (checks), the TOML file and the DOCBRAIN_* environment (config), and the
environment guards every process gets (envguard).
A leaf: it imports only supervisor.proto."""
