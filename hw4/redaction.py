"""Credentials masked in any text: one reading of every URI, for everything hw4 records or prints.

hw4.tracking applies it to params, tags, artifacts and errors; `redact_log_records` to every log
record of the process; `redacted_console` to what the console scripts print (Hydra's own
"Error executing job with overrides" line among them). Nothing heavy is imported here, so a
console script masks its output before MLflow or TensorFlow loads.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Any, Iterator, Mapping, TextIO

# Credentials in URIs: every `scheme://` starts a URI, which runs to the next whitespace. Its
# userinfo is read as both parsers that open hw4's stores read it, and the wider reading masked:
# SQLAlchemy's (password = everything after `user:` up to the `@` before the host, `/`, `:`,
# `?` and `#` included) and urllib's (the authority ends at `/`, `?` or `#`; userinfo up to its
# last `@`). Also as Hydra's log lines escape an override (`http\://alice\:pw@host`). Secret
# query parameters (?password=...) are masked too.
URI_START = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*\\?://")
USERINFO = re.compile(r"(?P<user>[^:/\s]*)(?::(?P<secret>[^@\s]*))?@")  # SQLAlchemy's, within one word
AUTHORITY = re.compile(r"[^/?#\s]*")  # urllib's netloc
SECRET_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token|secret|api_key)=)[^&\s]*", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it masked: postgresql://alice:pw@db ->
    postgresql://alice:***@db, https://token@host -> https://***@host. Everything hw4 writes or
    prints that may hold a tracking URI goes through this."""
    text, out, position = str(text), [], 0
    while (start := URI_START.search(text, position)) is not None:
        out.append(text[position : start.end()])
        position = start.end()
        userinfo_end = -1  # the `@` that ends the userinfo, under the wider of the two readings
        if (sqlalchemy := USERINFO.match(text, position)) is not None:
            userinfo_end = sqlalchemy.end() - 1
        authority = found.group() if (found := AUTHORITY.match(text, position)) else ""  # it matches, if only ""
        if "@" in authority:
            userinfo_end = max(userinfo_end, position + authority.rindex("@"))
        if userinfo_end < 0:
            continue
        user, colon, _ = text[position:userinfo_end].partition(":")
        # A user name stays readable; a bare token (no `:`), or a name that may hide one, does not.
        out.append(f"{user}:{MASK}" if colon and "@" not in user else MASK)
        position = userinfo_end
    out.append(text[position:])
    return SECRET_QUERY.sub(lambda m: m.group("key") + MASK, "".join(out))


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params (or any config tree) as they may be recorded: every string redacted, in nested
    mappings and lists too (tracking.uri above all)."""
    return {key: _redacted(value) for key, value in params.items()}


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return redact_params(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(v) for v in value)
    return value


def redact_log_records() -> None:
    """Every log record of this process (hw4's, Hydra's, MLflow's, urllib3's) with credentials
    masked, whichever handlers print or save it: Hydra's launchers log each job's overrides, a
    tracking.uri typed on the command line among them. Made by a record factory, which outlives
    the handlers Hydra sets up again for every job."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts", False):
        return

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when the record is emitted
            return record
        if "://" in message:
            record.msg, record.args = redact(message), None
        return record

    redacted_record.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacted_record)


class RedactingStream:
    """A text stream that writes what it is given with credentials masked (any other attribute,
    isatty and fileno included, is the wrapped stream's)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text) if "://" in text else text)
        return len(text)  # what the caller gave: a progress bar counts its own characters

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    """sys.stdout and sys.stderr masked while the block runs: a password typed on the command
    line is echoed by Hydra (a failed job's overrides) and by MLflow, not only by hw4."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
