"""Errors a user can act on. The CLI prints their message without a traceback."""


class SegdeployError(Exception):
    """Base of the expected errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class BadInputError(SegdeployError):
    """A file, option or argument that segdeploy cannot use (exit 2)."""

    exit_code = 2


class VerificationError(SegdeployError):
    """An artifact was produced or run but failed its check (exit 1)."""

    exit_code = 1


class MissingDependencyError(SegdeployError):
    """An optional package that the requested work needs is not installed (exit 2)."""

    exit_code = 2

    def __init__(self, package: str, extra: str | None = None, why: str = ""):
        hint = f"pip install 'segdeploy[{extra}]'" if extra else f"pip install {package}"
        reason = f" ({why})" if why else ""
        super().__init__(f"{package} is not installed{reason}; install it with: {hint}")
        self.package = package
