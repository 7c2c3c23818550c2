"""Terminal I/O for the entry points: streams, input files, atomic output.

Only entry points (cli, hook, guest agent) use this module; library code
raises errors and returns values instead of printing.
"""

from __future__ import annotations

import sys

from .atomic import atomic_write
from .errors import InputError

# Not typing's: every command imports this module (typing costs its start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

PROG = "xen-channel"
#: Bigger than any sane domain XML or xl.cfg; stops a stray `convert /dev/zero`.
MAX_INPUT_BYTES = 16 * 1024 * 1024


class Streams:
    """The three standard streams, injectable so tests call main() directly.

    A plain class, not a dataclass: importing dataclasses (inspect, ast,
    dis...) would cost every command more than most of them do.
    """

    def __init__(self, stdin: IO[Any], stdout: IO[str], stderr: IO[str]) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"Streams(stdin={self.stdin!r}, stdout={self.stdout!r}, stderr={self.stderr!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Streams):
            return NotImplemented
        return (self.stdin, self.stdout, self.stderr) == (other.stdin, other.stdout,
                                                          other.stderr)

    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: unhashable

    @classmethod
    def from_args(
        cls, stdin: IO[Any] | None, stdout: IO[str] | None, stderr: IO[str] | None
    ) -> Streams:
        return cls(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)

    def warn(self, message: str) -> None:
        print(f"{PROG}: warning: {message}", file=self.stderr)

    def error(self, message: str) -> None:
        print(f"{PROG}: error: {message}", file=self.stderr)


def read_input(spec: str, streams: Streams) -> tuple[bytes, str]:
    """Read a file argument (``-`` is stdin); return (data, label for messages)."""
    if spec == "-":
        stream = getattr(streams.stdin, "buffer", streams.stdin)
        data = stream.read(MAX_INPUT_BYTES + 1)
        label = "<stdin>"
        if isinstance(data, str):
            data = data.encode("utf-8")
    else:
        label = spec
        try:
            with open(spec, "rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
        except FileNotFoundError:
            raise InputError(spec, "no such file") from None
        except IsADirectoryError:
            raise InputError(spec, "is a directory") from None
        except PermissionError:
            raise InputError(spec, "permission denied") from None
        except OSError as exc:
            raise InputError(spec, exc.strerror or str(exc)) from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(label, f"input is over the {MAX_INPUT_BYTES // (1024 * 1024)} MiB limit")
    return data, label


def write_output(text: str, output: str | None, streams: Streams) -> None:
    """Print ``text``, or replace the file ``output`` with it atomically."""
    if output is None or output == "-":
        streams.stdout.write(text)
        streams.stdout.flush()
        return
    try:
        atomic_write(output, text)
    except OSError as exc:
        raise InputError(output, f"cannot write: {exc.strerror or exc}") from None
