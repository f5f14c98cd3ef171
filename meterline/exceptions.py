"""The root of every error meterline raises on purpose."""


class MeterlineError(Exception):
    """Base class: catch this to handle any meterline error."""


class ConfigurationError(MeterlineError):
    """A setting or a required tool is missing or wrong; the message says which."""
