"""The one exception of checkpoint I/O."""


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or mapped onto the model."""
