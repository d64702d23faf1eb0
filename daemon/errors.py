"""The one exception tree of Strandline.

    StrandlineError
    ├── ConfigError            the config file or environment is wrong; the message names key and fix
    │   └── SuiteError         a Great Expectations suite file is missing or not valid GX 1.x JSON
    ├── CatalogError           the SQLite catalog cannot be opened or is locked by another daemon
    ├── SourceError            a dataset root cannot be watched or read (missing, permission denied)
    │   └── ListingStoppedError   a listing was given up because the daemon is stopping
    ├── UnreadableDataError    one file cannot be read (vanished, permission denied, not a regular file)
    │   └── UnreadableTableError  the bytes were read but are not a table of their format (corrupt, ragged)
    ├── VersionNotFoundError   NAME@N does not exist
    ├── PublishError           Kafka cannot be reached or refused a message
    ├── BadEventError          a consumed message is not a valid Strandline event (dead-lettered at once)
    └── DeliveryError          a consumer's side effect failed (HTTP call, command); retried, then dead-lettered

Third-party and OS errors are caught at the boundary and re-raised as one of these with
``raise ... from exc`` and a message that says what to do next.
"""

from __future__ import annotations


class StrandlineError(Exception):
    """Root of every error Strandline raises on purpose."""


class ConfigError(StrandlineError):
    """Invalid configuration: the message names the file, the key and what is allowed."""


class SuiteError(ConfigError):
    """A validation suite cannot be loaded: the message names the file and what is wrong in it."""


class CatalogError(StrandlineError):
    """The catalog cannot be opened, migrated or written."""


class SourceError(StrandlineError):
    """A dataset root cannot be watched or listed."""


class ListingStoppedError(SourceError):
    """A listing was cut short by a stop request: nothing is concluded from the part listed."""


class UnreadableDataError(StrandlineError):
    """A single file cannot be fingerprinted."""


class VanishedError(UnreadableDataError):
    """The file (or object) disappeared or changed after it was listed: the pass is retried, not judged."""


class UnreadableTableError(UnreadableDataError):
    """A file of a tabular format cannot be parsed as a table; the message says why, for the log and event."""


class VersionNotFoundError(StrandlineError):
    """A dataset or version named by the user does not exist."""


class PublishError(StrandlineError):
    """Kafka is unreachable or rejected an event.

    ``fix``, when the cause is known, says what to change; the message ends with it too, so a log
    line carries both, and ``problem`` is the message without it (``strandline doctor`` shows them
    on separate lines).
    """

    def __init__(self, problem: str, *, fix: str = "") -> None:
        super().__init__(f"{problem}: {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix


class BadEventError(StrandlineError):
    """A consumed Kafka message is not a valid event of a type the consumer handles."""


class DeliveryError(StrandlineError):
    """A consumer's side effect failed: an HTTP endpoint refused or timed out, a command could not start.

    ``retriable`` is False when retrying cannot help (a 4xx answer other than 408/429).
    """

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable
