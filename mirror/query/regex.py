"""``$regex`` as W&B evaluates it: RE2 syntax and semantics, in time linear in the text.

Python's ``re`` backtracks, so one pattern such as ``^(.*)*!`` can pin a process on a long value;
RE2 cannot. Both the SQL path and the oracle match through this module, so they agree by
construction, and a pattern RE2 refuses (backreferences, lookaround) is a
:class:`~mirror.errors.FilterError` at parse time, never a different answer.

The SQL path first lets the database try the pattern's GLOB form (:func:`as_glob`), in C: for
most patterns it decides alone, for the rest it picks the candidates. What is left, the distinct
texts at the path, is matched here in one call (:func:`matching_texts`, an SQLite function;
on PostgreSQL :func:`matching`, just before the statement runs), never by a call back into
Python per row. Texts without a newline are matched as one
newline-joined string when the pattern allows it (:func:`_batch_modes`): a single RE2 scan then
finds whole runs of consecutive matching values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import re2

from mirror.errors import FilterError

#: inline flag letters for MongoDB's ``$options`` (``u`` is accepted and means nothing in RE2)
OPTIONS = {"i": "i", "m": "m", "s": "s", "x": "x", "u": ""}

#: RE2's complaints about Python-only syntax → what to tell the user
_UNSUPPORTED = (
    (("(?=", "(?!", "(?<=", "(?<!"), "lookahead/lookbehind assertions"),
    (("(?>",), "atomic groups"),
    (("(?(",), "conditional groups"),
    (("*+", "++", "?+", "}+"), "possessive quantifiers"),
    (("\\Z",), "\\Z (RE2 writes the end of the text as \\z)"),
    (tuple(f"\\{d}" for d in "123456789"), "backreferences"),
)

#: escapes that match neither a newline nor look beyond the value (see :func:`_batch_modes`)
_PLAIN_ESCAPES = frozenset("dwbBStfrva")
_CLASS_ESCAPES = frozenset("dwS")
_FLAG_GROUP = re.compile(r"\(\?([A-Za-z-]*)[:)]")
_REPEAT = re.compile(r"\{(\d+)(,\d*)?\}")
#: ``x{n}`` is written out as ``n`` copies up to this many
_MAX_COPIES = 16
_PLAIN_CLASS = re.compile(r"(?:[0-9A-Za-z_](?:-[0-9A-Za-z_])?)+")
#: RE2 folds these ASCII letters with one more character each (Kelvin sign, long s); the other
#: letters only with their other case
_FOLDS = {"k": "kK\u212a", "s": "sS\u017f"}


def pattern_text(pattern: str, flags: str, verbose: bool, what: str) -> str:
    """The RE2 pattern for a MongoDB pattern and its options, flags inline; FilterError if RE2
    cannot run it. ``x`` (verbose) has no RE2 equivalent, so its spaces and comments are removed
    here, as Python and MongoDB would ignore them."""
    text = _strip_verbose(pattern) if verbose else pattern
    if flags:
        text = f"(?{''.join(sorted(set(flags)))}){text}"
    try:
        _compile(text, False)
    except re2.error as exc:
        raise FilterError(f"{what}: {_explain(pattern, exc)}") from None
    return text


def search(pattern: str, value: str) -> bool:
    """Whether RE2 finds ``pattern`` (as :func:`pattern_text` returns it) in ``value``."""
    return _compile(pattern, False).search(value) is not None


def matching_texts(pattern: str, texts_json: str | None, hexed: int = 0) -> str:
    """The JSON array of those distinct texts (a JSON array) in which ``pattern`` is found;
    ``hexed``: texts given and returned as the hex of their UTF-8 (SQLite's ``hex()``).

    Registered as an SQLite function: the database hands over every distinct text at a path once,
    and gets back the few that match, to compare the index with.
    """
    texts = json.loads(texts_json) if texts_json else []
    if hexed:
        texts = [bytes.fromhex(t).decode() for t in texts]
    found = matching(pattern, texts)
    if hexed:
        found = [t.encode().hex().upper() for t in found]
    return json.dumps(found, ensure_ascii=False)


def matching(pattern: str, texts: list[str]) -> list[str]:
    """The distinct ``texts`` ``pattern`` is found in: newline-free ones in one scan where the
    pattern allows. Every SQL path ends here, once per pattern and statement."""
    anchored_to_value, newline_free = _batch_modes(pattern)
    if not anchored_to_value or not texts:
        return [t for t in texts if search(pattern, t)]
    joined = "\n".join(texts)
    if joined.count("\n") == len(texts) - 1:  # the common case: no text holds a newline
        lines, found = texts, []
    else:
        lines = [t for t in texts if "\n" not in t]
        found = [t for t in texts if "\n" in t and search(pattern, t)]
        joined = "\n".join(lines)
    try:
        found.extend(_scan(pattern, joined.encode(), newline_free) if lines else [])
    except re2.error:  # the scanner outgrew RE2's memory budget: one text at a time
        found.extend(t for t in lines if search(pattern, t))
    return found


def _scan(pattern: str, lines: bytes, newline_free: bool) -> list[str]:
    """The lines of ``lines`` (newline-joined values) in which ``pattern`` is found.

    ``(?m)`` makes ``^`` and ``$`` meet at each value's ends. A pattern that cannot match a
    newline is wrapped so that one match spans a whole block of consecutive matching lines; any
    other pattern runs with RE2's ``never_nl``, one match per matching line.
    """
    if newline_free:
        scanner = _compile(f"(?m)(?:^[^\\n]*?(?:{pattern})[^\\n]*(?:\\n|\\z))+", False)
    else:
        scanner = _compile(f"(?m)(?:{pattern})", True)
    found: list[str] = []
    position, end = 0, len(lines)
    while position <= end:
        match = scanner.search(lines, position)
        if match is None:
            break
        start, stop = match.span()
        first = lines.rfind(b"\n", 0, start) + 1
        last = lines.find(b"\n", max(start, stop - 1))
        last = end if last < 0 else last
        found.extend(lines[first:last].decode().split("\n"))
        position = last + 1
    return found


@dataclass(frozen=True)
class Glob:
    """A GLOB form of an RE2 pattern (see :func:`as_glob`)."""

    pattern: str
    #: it selects exactly the texts without a newline or NUL that RE2 finds the pattern in
    exact: bool
    #: exact on texts with newlines too (no ``.`` that stops at them, no ``(?m)`` anchors)
    across_lines: bool


def as_glob(pattern: str) -> Glob | None:
    """A GLOB pattern matching the *plain* texts (no newline, no NUL) RE2 finds ``pattern`` in,
    and maybe more; ``None`` when it would narrow nothing down.

    The database evaluates it on the index, in C: an exact one answers on its own (``-comet-``
    is ``*-comet-*``, ``^[a-m].*-1`` is ``[a-m]*-1*``), any other lets through a superset for RE2
    to decide, so ``^run-`` reads only an index range. Texts holding a newline or a NUL always go
    to RE2 (``.`` stops at a newline and GLOB at a NUL), which is also why ``^``, ``$``, ``(?m)``
    and ``(?s)`` need no care here. Each construct becomes one that matches at least as much: a
    literal itself (all its RE2 case variants under ``i``), a class itself or ``?``, ``.*``
    ``*``, a group or another optional atom ``*``, an assertion nothing; a top-level ``|``
    gives up.
    """
    leading = _FLAG_GROUP.match(pattern)
    scoped = leading is not None and leading.group(0).endswith(")")
    flags = "".join(m.group(1) for m in _FLAG_GROUP.finditer(pattern))
    fold, lines = "i" in flags, "s" not in flags  # ``lines``: ``.`` stops at a newline
    line_bound = False  # something here treats a newline unlike GLOB does
    # flags set anywhere but up front reach only part of the pattern: folding all is a superset
    exact = (scoped and len(_FLAG_GROUP.findall(pattern)) == 1) or not flags
    exact = exact and "-" not in flags
    pieces: list[str] = []  # "*", or a GLOB fragment matching exactly one character
    anchored_start = anchored_end = False
    i = 0
    while i < len(pattern):
        char, atom, plain = pattern[i], None, True
        if char == "|":
            return None
        if char in "^$" or pattern.startswith(("\\A", "\\z", "\\b", "\\B"), i):
            width = 1 if char in "^$" else 2
            token = pattern[i : i + width]
            line_bound = line_bound or (token in "^$" and "m" in flags)
            if token in ("^", "\\A") and not pieces:
                anchored_start = True
            elif token in ("$", "\\z") and i + width == len(pattern):
                anchored_end = True
            else:
                exact = False  # an assertion elsewhere, dropped
            i += width
        elif char == ".":
            atom, i, line_bound = "?", i + 1, line_bound or lines
        elif char == "[":
            atom, plain, i = _glob_class(pattern, i, fold)
        elif char == "(":
            flag_group = _FLAG_GROUP.match(pattern, i)
            if flag_group is not None and flag_group.group(0).endswith(")"):
                i = flag_group.end()
                continue
            atom, plain, i = "*", False, _group_end(pattern, i)
        elif char == "\\":
            if pattern[i + 1] in "QC":
                return None
            atom, plain, i = _glob_escape(pattern, i, fold)
        else:
            atom, plain, i = *_glob_literal(char, fold), i + 1
        least, most, i = _repetition(pattern, i)
        if atom is None:
            continue
        exact = exact and plain
        if least is None:
            pieces.append(atom)
        elif atom == "?" and plain and most is None:  # .* .+ .{2,}
            pieces.extend([atom] * least + ["*"])
        elif least == most and least <= _MAX_COPIES:  # x{3}
            pieces.extend([atom] * least)
        else:
            exact = False
            pieces.extend([atom] * min(least, 1) + ["*"])
    glob = ("" if anchored_start else "*") + "".join(pieces) + ("" if anchored_end else "*")
    while "**" in glob:
        glob = glob.replace("**", "*")
    if glob == "*" and not exact:
        return None
    return Glob(glob, exact, exact and not line_bound)


def glob_as_posix(glob: str) -> str:
    """The regular expression (POSIX, as PostgreSQL's ``~`` reads it) matching exactly the texts
    the GLOB pattern ``glob`` of :func:`as_glob` matches, for a database without GLOB.

    Only :func:`as_glob`'s GLOB subset is read: ``*``, ``?``, classes of plain letters, digits
    and ranges (``[^...]`` negated), literals (``*?[`` in brackets of their own). ``*`` and ``?``
    may take a newline on both sides (PostgreSQL's ``.`` does unless told otherwise), classes
    compare code points (the mirror's texts collate as "C"), and ASCII punctuation is escaped, so
    nothing in the result means more than the GLOB does. A GLOB matches the whole text, hence
    the anchors, which a ``*`` at either end drops instead.
    """
    body = glob[1:] if glob.startswith("*") else glob
    body = body[:-1] if body.endswith("*") else body
    pieces = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "[":
            end = body.index("]", i + 2)  # a class holds at least one member
            members = body[i + 1 : end]
            pieces.append("\\" + members if members in ("*", "?", "[") else f"[{members}]")
            i = end + 1
            continue
        if char in "*?":
            pieces.append(".*" if char == "*" else ".")
        else:
            pieces.append("\\" + char if char.isascii() and not char.isalnum() else char)
        i += 1
    start = "" if glob.startswith("*") else "^"
    end = "" if glob.endswith("*") and len(glob) > len(start) else "$"
    return start + "".join(pieces) + end


def _glob_literal(char: str, fold: bool) -> tuple[str, bool]:
    """A literal character as GLOB, and whether exactly (a non-ASCII letter folds widely)."""
    if fold and char.isalpha():
        if not char.isascii():
            return "?", False
        return f"[{_FOLDS.get(char.lower(), char.lower() + char.upper())}]", True
    if fold and not char.isascii():
        return "?", False  # some non-letters fold too (Roman numerals)
    return (f"[{char}]" if char in "*?[" else char), True


def _glob_escape(pattern: str, i: int, fold: bool) -> tuple[str, bool, int]:
    """The GLOB fragment for the escape at ``i`` (one character's worth), whether it is exact,
    and the index after it."""
    escaped = pattern[i + 1]
    if escaped == "d":
        return "[0-9]", True, i + 2
    if escaped == "w":
        return "[0-9A-Za-z_]", True, i + 2
    if escaped in "pPx" and pattern.startswith("{", i + 2):
        return "?", False, pattern.index("}", i) + 1
    if escaped in "pP":
        return "?", False, i + 3
    if escaped == "x":
        return "?", False, i + 4
    if escaped.isdigit():
        end = i + 2
        while end < min(i + 4, len(pattern)) and pattern[end] in "01234567":
            end += 1
        return "?", False, end
    if escaped.isalnum():
        return "?", False, i + 2  # \s, \D, \n, \t, ...: one character each
    return *_glob_literal(escaped, fold), i + 2


def _glob_class(pattern: str, start: int, fold: bool) -> tuple[str, bool, int]:
    """The character class at ``start`` as a GLOB class when it is plain letters, digits and
    ranges of them (as ``?`` otherwise), whether that is exact, and the index after it."""
    end, _ = _class_end(pattern, start)
    body = pattern[start + 1 : end - 1]
    negated = body.startswith("^")
    members = body[1:] if negated else body
    if fold or not members or not _PLAIN_CLASS.fullmatch(members):
        return "?", False, end
    return f"[{'^' if negated else ''}{members}]", True, end


def _group_end(pattern: str, start: int) -> int:
    """The index after the group opening at ``start`` (escapes and classes skipped)."""
    depth, i = 0, start
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i, _ = _class_end(pattern, i)
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        i += 1
        if depth == 0:
            return i
    return i


def _repetition(pattern: str, i: int) -> tuple[int | None, int | None, int]:
    """The least and most counts of a repetition operator at ``i`` (``None, None``: there is
    none; most ``None``: unbounded), and the index after it (a lazy ``?`` included)."""
    bounds = _REPEAT.match(pattern, i)
    if bounds is not None:
        least, rest = int(bounds.group(1)), bounds.group(2)
        most = least if rest is None else (int(rest[1:]) if rest[1:] else None)
        i = bounds.end()
    elif i < len(pattern) and pattern[i] in "*+?":
        least, most = (1, None) if pattern[i] == "+" else (0, None if pattern[i] == "*" else 1)
        i += 1
    else:
        return None, None, i
    return least, most, i + 1 if pattern.startswith("?", i) else i


def _batch_modes(pattern: str) -> tuple[bool, bool]:
    """Whether ``pattern`` can be run over newline-joined values: ``(anchored_to_value,
    newline_free)``.

    The first is false when the pattern looks at the ends of the whole text (``\\A``, ``\\z``),
    switches flags off (it might switch off ``m``), matches raw bytes (``\\C``) or quotes
    (``\\Q``); then each value is matched alone. The second is true only when nothing in it can
    match a newline (no ``\\s``, negated class, ``(?s)``, ...). Both are conservative: a construct
    not known to be safe counts as unsafe, which costs speed, never correctness.
    """
    anchored, newline_free = True, "\n" not in pattern
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped in ("A", "z", "C", "Q", "E"):
                anchored = False
            elif escaped.isalnum() and escaped not in _PLAIN_ESCAPES:
                newline_free = False
            i += 2
            continue
        if char == "[":
            i, plain = _class_end(pattern, i)
            newline_free = newline_free and plain
            continue
        if char == "(":
            flags = _FLAG_GROUP.match(pattern, i)
            if flags is not None:
                anchored = anchored and "-" not in flags.group(1)
                newline_free = newline_free and "s" not in flags.group(1)
        i += 1
    return anchored, newline_free


def _class_end(pattern: str, start: int) -> tuple[int, bool]:
    """The index after the character class opening at ``start``, and whether it is sure not to
    contain a newline (not negated, no POSIX class, no escape or range that may reach it)."""
    i = start + 1
    plain = True
    if pattern.startswith("^", i):
        plain = False
        i += 1
    first = True
    previous: str | None = None  # the last single character, a range's possible start
    while i < len(pattern) and (first or pattern[i] != "]"):
        first = False
        char = pattern[i]
        if pattern.startswith("[:", i):
            close = pattern.find(":]", i + 2)
            plain, previous = False, None
            i = len(pattern) if close < 0 else close + 2
            continue
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped.isalnum():
                plain = plain and escaped in _CLASS_ESCAPES
                previous = None
            else:
                previous = escaped
            i += 2
            continue
        if char == "-" and previous is not None and i + 1 < len(pattern) and pattern[i + 1] != "]":
            end = pattern[i + 1]
            if end == "\\" or ord(previous) <= ord("\n") <= ord(end):
                plain = False
            previous = None
            i += 3 if end == "\\" else 2
            continue
        previous = char
        i += 1
    return i + 1, plain


def _strip_verbose(pattern: str) -> str:
    """``pattern`` without the whitespace and ``#`` comments the ``x`` option ignores (outside
    character classes, unless escaped), which RE2 would otherwise take literally."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]" or out[-1] in ("[", "[^")
        elif char == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
                continue
        elif char.isspace():
            i += 1
            continue
        elif char == "#":
            newline = pattern.find("\n", i)
            i = len(pattern) if newline < 0 else newline + 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _explain(pattern: str, exc: re2.error) -> str:
    """RE2's complaint, in the user's terms: which construct is Python-only, or what is wrong."""
    detail = exc.args[0] if exc.args else ""
    if isinstance(detail, bytes):
        detail = detail.decode(errors="replace")
    for spellings, construct in _UNSUPPORTED:
        if any(s in detail for s in spellings):
            return (
                f"{pattern!r} uses {construct}, which RE2 (the engine W&B uses) does not "
                f"support ({detail})"
            )
    return f"invalid pattern {pattern!r}: {detail}"


@lru_cache(maxsize=256)
def _compile(pattern: str, never_nl: bool) -> re2._Regexp:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    options.never_nl = never_nl
    return re2.compile(pattern, options)
