"""lienthong: the electronic document exchange between Vietnamese state agencies."""

__version__ = "0.1.0"
