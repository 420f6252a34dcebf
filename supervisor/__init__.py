"""DocBrain supervisor: the daemon (control plane) behind ``docbrainctl``."""

__version__ = "0.1.0"
