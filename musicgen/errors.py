"""Exceptions a caller can act on.

Every mistake a person can make (a bad file, a bad parameter, a missing checkpoint) ends in one of these,
with a message that says what was wrong, which input, and what to do. Internal invariants use `assert`.
"""


class MusicGenError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInputError(MusicGenError, ValueError):
    """A generation parameter or input file is not acceptable."""


class AudioFileError(InvalidInputError):
    """An audio file is missing, unreadable, or empty."""


class FineTunedWeightsError(InvalidInputError):
    """Fine-tuned weights given with a request cannot be used (unreadable, damaged, or for another model)."""


class CheckpointError(MusicGenError):
    """A checkpoint file or folder is missing, not a MusicGen checkpoint, or does not fit its config."""


class WeightsNotFoundError(CheckpointError):
    """The weights of a model are not on disk and could not be downloaded."""
