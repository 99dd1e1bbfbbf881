"""One exception tree: every error a user can cause is a FedmedError with a message that names what and where."""


class FedmedError(Exception):
    """A user-facing error: the message names the file, site or key and the fix."""


class ConfigError(FedmedError):
    """A configuration file is missing, malformed or invalid."""


class DataError(FedmedError):
    """Site data is missing or unusable."""


class PrivacyError(FedmedError):
    """A privacy setting or budget would be violated; training is refused."""


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """Return a hint like " (did you mean 'rounds'?)" for a misspelt name, or ""."""
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
