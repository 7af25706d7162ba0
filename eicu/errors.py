"""The exception tree of eicu.

Third-party errors are translated at the boundary, so callers catch these and nothing else::

    EicuError
    ├── ConfigError              a setting is missing or malformed (names the key)
    ├── PayloadError             a message from the wire was rejected (has .reason)
    ├── StorageError
    │   ├── StorageUnavailable   the database cannot be reached now; retry later
    │   ├── SchemaError          the schema is not what this version expects
    │   └── CodecError           a stored waveform block is corrupt, truncated or of unknown format
    ├── DeliveryError            an alarm notification could not be delivered (has .retryable)
    ├── RecordError              a WFDB record cannot be read or is not in the expected layout
    ├── ScoreInputError          an input to an early-warning score is impossible (has .field)
    ├── ScoreDefinitionError     a score definition (thresholds as data) is malformed (has .path)
    └── AlarmPolicyError         an alarm policy (limits, delays as data) is malformed (has .path)
"""

from __future__ import annotations


class EicuError(Exception):
    """Base of every error raised by eicu."""


class ConfigError(EicuError, ValueError):
    """A setting is missing or malformed. The message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class PayloadError(EicuError, ValueError):
    """A message from the wire was rejected.

    ``reason`` is a short, stable label used for metrics and the dead-letter table
    (for example ``truncated`` or ``impossible_value``); ``detail`` says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StorageError(EicuError):
    """A problem in the store."""


class StorageUnavailable(StorageError):
    """The database cannot be reached now. Writes are kept and retried."""


class SchemaError(StorageError):
    """The database schema is newer than this version understands, or is damaged."""


class CodecError(StorageError, ValueError):
    """A stored waveform block cannot be decoded: corrupt, truncated, or of an unknown format.

    ``reason`` is a short, stable label (for example ``checksum`` or ``truncated``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeliveryError(EicuError):
    """An alarm notification could not be delivered over its channel.

    ``channel`` names the channel (``mqtt``, ``webhook``, ``email``), ``key`` is the
    notification's idempotency key; ``retryable`` is False when trying again cannot help (the
    receiver refused the request), True for outages and time-outs.
    """

    def __init__(self, channel: str, key: str, detail: str, *, retryable: bool = True) -> None:
        super().__init__(f"{channel} delivery of {key}: {detail}")
        self.channel = channel
        self.key = key
        self.detail = detail
        self.retryable = retryable


class RecordError(EicuError, ValueError):
    """A WFDB record cannot be read, or is not in the layout a command expects."""


class ScoreInputError(EicuError, ValueError):
    """An input to an early-warning score is impossible or malformed.

    ``field`` names the input (for example ``spo2``); ``detail`` says what was wrong with it.
    A missing value is not an error: it makes the score incomplete.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class ScoreDefinitionError(EicuError, ValueError):
    """A score definition is malformed. ``path`` locates the bad entry (``components[2].bands``)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class AlarmPolicyError(EicuError, ValueError):
    """An alarm policy is malformed. ``path`` locates the bad entry (``conditions.HR_LOW``)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail
