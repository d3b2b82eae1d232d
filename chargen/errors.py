"""One exception family: the CLI turns any of these into a single `Error: ...` line."""


class ChargenError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""

    exit_code = 1
    speak: bool | None = None  # under torchrun: whether this rank reports it (None: rank 0 does)


class CorpusError(ChargenError):
    pass


class CheckpointError(ChargenError):
    pass


class ConfigError(ChargenError):
    pass


class CacheError(ChargenError):
    pass


class TrainingDiverged(ChargenError):
    pass
