"""The errors `jresnet.data` raises where a built-in type would say too little.

Each subclasses the built-in error a caller would already catch (``FileNotFoundError``, ``ValueError``,
``OSError``), so ``except FileNotFoundError`` keeps working.
"""

from __future__ import annotations

__all__ = ["ChecksumMismatchError", "DatasetNotFoundError", "DownloadError", "UnsafePickleError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and were not downloaded.

    The message is one line: which files are expected, the folder to put them in, and the URL to get
    them from.
    """


class DownloadError(OSError):
    """A download failed (no network, refused connection, HTTP error); the message names the URL."""


class ChecksumMismatchError(ValueError):
    """A downloaded file's checksum differs from the published one; the file was deleted."""


class UnsafePickleError(ValueError):
    """A pickle asked for a global that the restricted unpickler does not admit.

    Raised before anything the pickle names is imported or called, so no code from the file runs.
    """
