"""The failures a user can act on. Steps print them as one line and record them on the run."""


class PipelineError(Exception):
    """Base of every error whose message alone tells the user what to fix."""


class ConfigError(PipelineError, ValueError):
    """A config file that is missing, unreadable or invalid; the message names the file and key."""


class UnknownBuiltinModelError(PipelineError, ValueError):
    pass


class SourceError(PipelineError, RuntimeError):
    """The model source cannot be fetched; the message names the source and the cause."""


class OnnxBuildError(PipelineError, RuntimeError):
    pass


class GateFailedError(PipelineError):
    """A candidate model did not pass the registry gates; nothing was promoted."""


class StepFailedError(PipelineError):
    """A child step of the pipeline failed."""


class RegistryError(PipelineError):
    """The model registry could not answer (server down, refused, misconfigured): never read as "none"."""


class RollbackError(PipelineError, LookupError):
    """A rollback that cannot be done: no such registered model, or no version to roll back to."""


class BadRequestError(ValueError):
    """A request the model refuses (HTTP 400): the message says why, `param` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class DeadlineExceededError(RuntimeError):
    """A request whose generation passed its deadline (HTTP 504); the model is free again."""


class TrainingDataError(PipelineError, ValueError):
    """A training set or training setting refused before any training; the message names the row or field."""
