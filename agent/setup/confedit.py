"""Small, comment-keeping edits of ``key = value`` configuration files.

Two styles are handled: libvirt's (``libvirtd.conf``, ``qemu.conf``: ``key = value``, ``#``
comments) and shell variable files (``/etc/default/libvirtd``: ``KEY=value``). Editing
rules, for each key:

* every uncommented ``key = ...`` line gets the new value in place (indentation, the
  spacing around ``=`` and a trailing comment are kept);
* otherwise, when the key is only present commented out (``#key = ...``), the active line
  is inserted right after that comment (the comment whose value equals the new one is
  preferred, else the first);
* otherwise the line is appended at the end, under a one-time header comment.

Every other line is left exactly as it was, line endings included. Values are given
already rendered (``1``, ``"16514"``).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.fsutil import atomic_write

LIBVIRT_SEPARATOR = " = "
SHELL_SEPARATOR = "="
# Values of keys containing one of these words are never printed (diffs included).
_SECRET = re.compile(
    r"^(?P<head>[ +\-]?\s*[#!]*\s*[\w.\-]*(?:passphrase|password|passwd|secret)[\w.\-]*"
    r"\s*[=:]\s*)(?P<value>\S.*)$",
    re.IGNORECASE,
)
_VALUE = re.compile(r"""^("[^"]*"|'[^']*'|[^\s#]*)(.*)$""", re.S)


def _split_eol(line: str) -> tuple[str, str]:
    body = line.rstrip("\r\n")
    return body, line[len(body) :]


def _active_re(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<head>\s*{re.escape(key)}\s*=\s*)(?P<rest>.*)$")


def _commented_re(key: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*#+\s*{re.escape(key)}\s*=\s*(?P<rest>.*)$")


def split_value(rest: str) -> tuple[str, str]:
    """``'"a b" # c'`` -> (``'"a b"'``, ``' # c'``): the value token and what follows it."""
    match = _VALUE.match(rest)
    assert match is not None  # the pattern matches any string
    return match.group(1), match.group(2)


def unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    return token


def get_value(text: str, key: str) -> str | None:
    """The raw value token of the first uncommented ``key = ...`` line, or None."""
    pattern = _active_re(key)
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            return split_value(match.group("rest"))[0]
    return None


def _set_one(lines: list[str], key: str, value: str, separator: str, header: str) -> list[str]:
    active = _active_re(key)
    found = False
    out = []
    for line in lines:
        body, eol = _split_eol(line)
        match = active.match(body)
        if match:
            found = True
            token, trail = split_value(match.group("rest"))
            if token != value:
                line = f"{match.group('head')}{value}{trail}{eol}"
        out.append(line)
    if found:
        return out

    commented = _commented_re(key)
    candidates = []
    for index, line in enumerate(lines):
        match = commented.match(_split_eol(line)[0])
        if match:
            candidates.append((split_value(match.group("rest"))[0] == value, index))
    new_line = f"{key}{separator}{value}"
    if candidates:
        index = next((i for same, i in candidates if same), candidates[0][1])
        eol = _split_eol(lines[index])[1] or "\n"
        if not _split_eol(lines[index])[1]:
            out[index] += eol
        out.insert(index + 1, new_line + eol)
        return out

    if out and not _split_eol(out[-1])[1]:
        out[-1] += "\n"
    if header not in (_split_eol(line)[0] for line in out):
        out.extend([*(["\n"] if out else []), header + "\n"])
    out.append(new_line + "\n")
    return out


def _ensure_note(lines: list[str], key: str, note: str) -> list[str]:
    """Put the comment line ``note`` right before the first active ``key`` line, once."""
    if note in (_split_eol(line)[0] for line in lines):
        return lines
    active = _active_re(key)
    for index, line in enumerate(lines):
        if active.match(_split_eol(line)[0]):
            eol = _split_eol(line)[1] or "\n"
            return [*lines[:index], note + eol, *lines[index:]]
    return lines


def set_values(
    text: str,
    values: Mapping[str, str],
    *,
    separator: str = LIBVIRT_SEPARATOR,
    header: str = "# Added by kvm-agent",
    notes: Mapping[str, str] | None = None,
) -> str:
    """``text`` with every key of ``values`` set (see the module docstring for the rules).

    ``notes`` maps a key to a comment line to keep right before that key's line.
    Returns ``text`` itself when nothing needed to change.
    """
    lines = text.splitlines(keepends=True)
    for key, value in values.items():
        lines = _set_one(lines, key, value, separator, header)
    for key, note in (notes or {}).items():
        lines = _ensure_note(lines, key, note)
    new = "".join(lines)
    return text if new == text else new


def redact(line: str) -> str:
    """A diff or config line with the value of a secret-looking key replaced."""
    match = _SECRET.match(line)
    if not match:
        return line
    return f"{match.group('head')}<redacted>"


def unified_diff(path: Path, old: bytes | None, new: bytes) -> str:
    """A unified diff from ``old`` (None: no file yet) to ``new``, secrets redacted."""
    before = old.decode("utf-8", "replace").splitlines(keepends=True) if old is not None else []
    after = new.decode("utf-8", "replace").splitlines(keepends=True)
    lines = difflib.unified_diff(
        before,
        after,
        fromfile=str(path) if old is not None else "/dev/null",
        tofile=str(path),
    )
    out = []
    for line in lines:
        body, eol = _split_eol(line)
        if not body.startswith(("---", "+++", "@@")):
            body = redact(body)
        out.append(body + (eol or "\n\\ No newline at end of file\n"))
    return "".join(out)


def replace_file(path: Path, data: bytes, *, new_mode: int = 0o644) -> None:
    """Atomically replace ``path`` (or the file it links to) with ``data``.

    The file keeps its permission bits, and its owner when we run as root; a new file gets
    ``new_mode``.
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    atomic_write(path, data, mode=stat.S_IMODE(st.st_mode) if st else new_mode)
    if st is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, os.getegid()):
        os.chown(path, st.st_uid, st.st_gid)
