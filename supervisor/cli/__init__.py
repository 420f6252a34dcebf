"""docbrainctl: the click group (main) adds the commands of each module here (daemon, jobs,
ops, service, doctor); those import what they share from common, never main."""
