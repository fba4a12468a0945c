"""The root of meterline's error tree; each component adds its own branch in its errors module."""


class MeterlineError(Exception):
    """Anything meterline raises on purpose derives from this."""
