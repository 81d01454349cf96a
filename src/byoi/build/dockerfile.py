"""What a Dockerfile builds from: the images outside the build that its result depends on.

Used by the build-result cache (services/build_reuse.py): a build whose context, options and base images are the
same as an earlier successful build's gives that build's image again without running the builder. The base images
are part of that key, so this module finds them as the Docker Engine's classic builder does: parser directives
(`# escape=`), line continuations and comments; the global `ARG`s before the first `FROM`, with their defaults
and the build's arguments; `FROM image [AS name]` and `COPY --from=image`, where a stage's name or index is not
an image.

`read` raises Unsure when it cannot find the images with certainty: a `FROM` or `--from` whose variables it cannot
expand, an expansion it does not know, something that is not an image reference, a heredoc, a line it cannot
read. It says `not_reusable` when the images are known but something else decides the result: an `ADD` of a URL,
a variable or a JSON list (fetched at build time, or hiding what it names), an `ONBUILD` that copies from an
image or fetches. Either means "build it": the cache never guesses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import regex

from byoi.registry import reference

_DIRECTIVE = regex.compile(r"#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*")
_DIRECTIVES = ("syntax", "escape", "check")  # the names the parser knows; another name ends the directives
# $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word}: the forms the classic builder expands.
_VARIABLE = regex.compile(
    r"\$(?:(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<word>[^}$]*))?\})"
)
_ARG = regex.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>.*))?", regex.DOTALL)
_FLAG = regex.compile(r"--(?P<name>[a-z-]+)(?:=(?P<value>\S*))?")
MAX_INSTRUCTIONS = 10_000


class Unsure(Exception):
    """The Dockerfile uses something the cache cannot be sure about."""


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuations joined and comments dropped, as the
    classic builder's parser reads them: lines end at "\\n" only (a trailing "\\r" dropped), parser directives
    are at the very top, and a line continues when it ends in the escape character not itself escaped."""
    escape = "\\"
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]  # BOM: not a word
    start = 0
    while start < len(lines) and (m := _DIRECTIVE.fullmatch(lines[start].lstrip())):
        name = m[1].lower()
        if name not in _DIRECTIVES:
            break  # an unknown directive is a comment, and ends the directives
        if name == "escape":
            if m[2] not in ("\\", "`"):
                raise Unsure(f"escape directive {m[2]!r}")
            escape = m[2]
        start += 1
    result: list[tuple[str, str]] = []
    pending = ""
    for line in lines[start:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and empty lines, inside a continuation too
        body = line.rstrip(" \t")
        if body.endswith(escape) and (body == escape or body[-2] != escape):
            pending += body[: -len(escape)]
            continue
        whole = (pending + line).strip()
        pending = ""
        word, *args = whole.split(None, 1)
        result.append((word.upper(), args[0].strip() if args else ""))
        if len(result) > MAX_INSTRUCTIONS:
            raise Unsure("too many instructions")
    if pending.strip():
        word, *args = pending.split(None, 1)
        result.append((word.upper(), args[0].strip() if args else ""))
    return result


def expand(value: str, variables: Mapping[str, str]) -> str:
    """`value` with its variables substituted as the classic builder does for FROM (unset names are empty)."""
    if "\\$" in value:
        raise Unsure("escaped $")

    def one(m: regex.Match[str]) -> str:
        name = m["bare"] or m["name"]
        current = variables.get(name, "")
        if m["op"] == ":-":
            return current or m["word"]
        if m["op"] == ":+":
            return m["word"] if current else ""
        return current

    expanded = _VARIABLE.sub(one, value)
    if "$" in expanded:
        raise Unsure(f"an expansion this parser does not know in {value!r}")
    return expanded


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] in inner or "\\" in inner:
            raise Unsure("a quoted ARG default with quotes or escapes inside")
        return inner
    if any(c in value for c in "\"'\\ \t"):
        raise Unsure("an ARG default with quotes, escapes or spaces")
    return value


def _flags(args: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        m = _FLAG.fullmatch(token)
        if not m:
            raise Unsure(f"flag {token!r}")
        flags[m["name"]] = m["value"] or ""
        rest = rest.lstrip()
    return flags, rest


def _local_sources(args: str) -> bool:
    """Whether an ADD's sources are plain paths in the context: no URL or git remote (fetched when the build runs,
    so not in the context's bytes), no variable (it could name one), no JSON form (its escapes could hide one)."""
    _, rest = _flags(args)
    return not rest.startswith("[") and not any(c in rest for c in "$\\") and "://" not in rest and "git@" not in rest


def _trigger_is_plain(trigger: str) -> bool:
    """Whether an ONBUILD trigger (it runs in builds FROM this image) stays inside the context."""
    word, *rest = trigger.split(None, 1)
    args = rest[0] if rest else ""
    if word.upper() == "ADD":
        return _local_sources(args)
    if word.upper() == "COPY":
        return "--from" not in args
    return word.upper() not in ("ONBUILD", "FROM")


@dataclass(frozen=True)
class Facts:
    images: list[str]  # the images from outside the build it uses, in order, each once, `scratch` left out
    not_reusable: str | None  # why its result cannot be known from its inputs (what it fetches), if so


def read(text: str, build_args: Mapping[str, str]) -> Facts:
    """What `text` builds from, and whether anything else decides its result; raises Unsure when even its images
    cannot be found with certainty."""
    not_reusable: str | None = None
    variables: dict[str, str] = {}
    done: list[str] = []  # lower-case names of the stages before the current one ("" for one without)
    current: str | None = None  # the current stage's name: known to later stages only, as the builder does
    images: list[str] = []

    def add(ref: str) -> None:
        try:
            reference.parse(ref)
        except reference.InvalidReference:
            if ref.lower() != "scratch":
                raise Unsure(f"image reference {ref!r}") from None
        if ref.lower() != "scratch" and ref not in images:
            images.append(ref)

    for word, args in instructions(text):
        if word in ("RUN", "COPY", "ADD") and "<<" in args:
            raise Unsure("a heredoc (newer parsers read its lines as the instruction's)")
        if word == "ARG" and current is None:  # global: in scope for every FROM
            for item in args.split():
                m = _ARG.fullmatch(item)
                if not m:
                    raise Unsure(f"ARG {item!r}")
                name = m["name"]
                if name in build_args:
                    variables[name] = build_args[name]
                elif m["value"] is not None:
                    variables[name] = expand(_unquote(m["value"]), variables)
        elif word == "FROM":
            _, rest = _flags(args)
            parts = rest.split()
            if len(parts) == 3 and parts[1].lower() == "as":
                name = parts[2].lower()
            elif len(parts) == 1:
                name = ""
            else:
                raise Unsure(f"FROM {args!r}")
            if current is not None:
                done.append(current)
            ref = expand(parts[0], variables)
            if ref.lower() not in [s for s in done if s]:  # a stage built here is not an image from outside
                add(ref)
            current = name
        elif word == "COPY":
            flags, _ = _flags(args)
            source = flags.get("from")
            if source is not None:
                if "$" in source:
                    raise Unsure(f"COPY --from={source}")
                index = source.isascii() and source.isdigit() and int(source) < len(done)
                if source.lower() not in [s for s in done if s] and not index:
                    add(source)
        elif word == "ADD":
            if not _local_sources(args):
                not_reusable = "ADD of a URL, a variable or a JSON list (what it fetches is not in the context)"
        elif word == "ONBUILD":  # runs in later stages FROM this one, and in builds FROM the image
            if not _trigger_is_plain(args):
                not_reusable = "an ONBUILD trigger that copies from an image or fetches a URL"
    if current is None:
        raise Unsure("no FROM")
    return Facts(images, not_reusable)


def triggers_are_plain(onbuild: list[str] | None) -> bool:
    """Whether a base image's ONBUILD triggers (which run in this build) stay inside the context: no
    COPY --from another image, no ADD of a URL or variable."""
    return all(_trigger_is_plain(t) for t in onbuild or [] if t.strip())
