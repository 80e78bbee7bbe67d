"""A refusal's shape: `Problem` (file, line, column, message) and the parsers' `ProblemError`.

Shared by the validator registry, the parsers and `validate`; messages never quote file content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Locate", "Parsed", "Problem", "ProblemError"]

# (document index, JSON path) -> (line, column) of the value there, (0, 0) when unknown
Locate = Callable[[int, list[Any]], tuple[int, int]]
# A file's text -> its documents and how to locate a value in them; raises `ProblemError`.
Parsed = tuple[list[Any], Locate]


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a file is refused, and where: line and column count from 1 (0 when unknown).

    The message is built from facts of the parser or the schema, never from the file's bytes: refusal
    reasons reach /status, the logs and the webhook's denial, where a Secret's value must never appear.
    """

    file: str
    message: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        """`file:line:column: message`, leaving out what is unknown (the message alone without a file)."""
        if not self.file:
            return self.message
        where = self.file
        if self.line:
            where += f":{self.line}" + (f":{self.column}" if self.column else "")
        return f"{where}: {self.message}"


class ProblemError(Exception):
    """A parser's or a schema's refusal, before it is known which file it is about."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column

    def at(self, file: str) -> Problem:
        return Problem(file, self.message, self.line, self.column)
