"""The control plane: the daemon loop (daemon), the control requests it answers
(requests), configuration reloads (reload), the models it preloads (models), its Prometheus
metrics (metrics) and its logs (logs). It uses the queue (jobs), the workers (pool) and the
service manager (service)."""
