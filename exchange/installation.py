"""The files the package ships beside its code, found wherever it is installed.

The XSDs and the receipt JSON Schema are package data in ``exchange/schemas/``
(the repository's top-level ``schemas/`` is a link to that folder, for people
reading the repository), the migrations in ``exchange/store/migrations/``.
:mod:`importlib.resources` finds them from a checkout, an editable install
and an installed wheel alike.

A shipped file that is missing or unreadable is :class:`BrokenInstallation`:
the fault of the installation, never of a message, so a worker refuses to
start with it and never retries or parks a message for it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The package whose data this module finds (this module's own).
PACKAGE = __name__.rpartition(".")[0]


class BrokenInstallation(Exception):
    """A file the package ships is missing or unreadable; the message says which and what to do."""


def data_dir(name: str) -> Path:
    """The folder ``name`` of the package's data, as a folder on disk.

    The XSDs include one another by relative path, which libxml2 resolves on
    disk, so the data must be files in a folder: a package imported from a
    zip archive is refused with :class:`BrokenInstallation`.
    """
    folder = resources.files(PACKAGE) / name
    if not isinstance(folder, Path):
        raise BrokenInstallation(
            f"the package's {name}/ folder is not on disk ({folder}); "
            "install lienthong with pip, which unpacks it"
        )
    return folder
