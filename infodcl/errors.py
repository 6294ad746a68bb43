"""Error types a user sees: each message names the file, row or field and what was expected.

Not a paper section: the product's contract for bad input (issue "Bad input").
"""


class InfoDCLError(Exception):
    """Base of every error this package raises on purpose."""


class DataError(InfoDCLError, ValueError):
    """A data file is missing, malformed or inconsistent."""


class ContractError(InfoDCLError):
    """A data contract (Great Expectations suite) failed."""


class TrainingError(InfoDCLError):
    """Training cannot go on (e.g. a non-finite loss term)."""


class DownloadError(DataError):
    """A source file could not be fetched over the network: transient, so worth a retry."""
