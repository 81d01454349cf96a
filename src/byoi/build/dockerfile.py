"""What a Dockerfile builds from: the images outside the build that its result depends on.

Used by the build-result cache (services/build_reuse.py): a build whose context, options and base images are the
same as an earlier successful build's gives that build's image again without running the builder. The base images
are part of that key, so this module finds them as the Docker Engine's classic builder does: parser directives
(`# escape=`), line continuations and comments; the global `ARG`s before the first `FROM`, with their defaults
and the build's arguments; `FROM image [AS name]` and `COPY --from=image`, where a stage's name or index is not
an image.

It answers None whenever it cannot be sure: a `FROM` or `--from` whose variables it cannot expand, a form of
expansion it does not know, an `ADD` of a URL (fetched at build time: its content is not in the context), a line
it cannot read. None means "build it": the cache never guesses.
"""

from __future__ import annotations

from collections.abc import Mapping

import regex

_DIRECTIVE = regex.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*")
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
    classic builder's parser reads them."""
    escape = "\\"
    lines = text.removeprefix("\ufeff").splitlines()  # a UTF-8 byte order mark is not part of the first word
    start = 0
    while start < len(lines) and (m := _DIRECTIVE.fullmatch(lines[start])):  # parser directives: at the top only
        if m[1].lower() == "escape":
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
        body = line.rstrip()
        if body.endswith(escape):
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


def base_images(text: str, build_args: Mapping[str, str]) -> list[str]:
    """The images from outside the build that `text` builds from (FROM and COPY --from), in order, each once,
    `scratch` left out. Raises Unsure (see the module's docstring)."""
    variables: dict[str, str] = {}
    stages: list[str] = []  # lower-case stage names, "" for a stage without one
    images: list[str] = []

    def add(ref: str) -> None:
        if not ref or any(c.isspace() for c in ref):
            raise Unsure(f"image reference {ref!r}")
        if ref.lower() != "scratch" and ref not in images:
            images.append(ref)

    for word, args in instructions(text):
        if word == "ARG" and not stages:  # global: in scope for every FROM
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
            ref = expand(parts[0], variables)
            if ref.lower() not in [s for s in stages if s]:  # a stage built here is not an image from outside
                add(ref)
            stages.append(name)
        elif word == "COPY":
            flags, _ = _flags(args)
            source = flags.get("from")
            if source is not None:
                if "$" in source:
                    raise Unsure(f"COPY --from={source}")
                if source.lower() not in stages and not (source.isdigit() and int(source) < len(stages)):
                    add(source)
        elif word == "ADD":
            if "://" in args or "git@" in args:
                raise Unsure("ADD of a URL (fetched when the build runs)")
        elif word == "ONBUILD":
            continue  # runs in builds FROM this image, not in this one
    if not stages:
        raise Unsure("no FROM")
    return images


def triggers_are_plain(onbuild: list[str] | None) -> bool:
    """Whether a base image's ONBUILD triggers (which run in this build) stay inside the context: no
    COPY --from another image and no ADD of a URL."""
    return not any("--from" in t or "://" in t or "git@" in t for t in onbuild or [])
