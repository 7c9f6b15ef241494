"""The error every command reports as a usage error (exit code 2): settings that cannot work."""


class ConfigError(ValueError):
    """A config key, override or flag that is unknown, wrongly typed, out of range or clashes with another;
    the message names it and shows what would work. Raised before any training or process group starts."""
