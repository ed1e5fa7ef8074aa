"""container-snapd: a snapshot daemon for container hosts."""

__version__ = "0.1.0"
