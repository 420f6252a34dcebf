"""The service managers: systemd and launchd units and supervisord programs (units), and
sd_notify READY, STATUS and WATCHDOG (notify)."""
