"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a file, a manifest, a flag. The message names the thing and the problem."""


class DataError(UserError):
    """A data file that cannot be used. The message starts with the file's path."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # pickled as its parts, so a copy in another process reads the same
        return type(self), (self.path, self.problem)
