"""How the processes find and talk to each other: the frames on the sockets (wire), the
control requests (control), the state_dir paths, the pidfile, the instance marker, process
titles, what a spawned worker is given (spec) and the embed payload (embed). A leaf: both the
daemon and the worker program (workers) import it, and it imports neither."""
