"""Console area: image versions and the builds that make them. Every page reads and changes through the API as
the signed-in principal; a user reads the versions of the images attached to them (the API decides) and sees
no control they cannot use.

- `GET /console/images/<name>/versions/new` (administrators): two ways to make a version. From a registry
  reference: `POST .../versions/new` checks it with Byoi.DescribeImageReference (an error shows next to the
  field, what was typed kept), then CreateImageVersion and 303 to the version page. With htmx the field is
  checked as soon as it changes: `GET .../versions/resolve?BaseImage=` answers "resolves to sha256:…". By
  building: `POST .../versions/build` (multipart: a Dockerfile file or pasted text, context files or one
  .tar/.tar.gz archive, build arguments) packs the context tar, hands it to the build service as the signed
  upload route does (policy `StartImageBuild`, then `BuildService.accept_context`), calls StartImageBuild with
  ImageName (the version is registered when the push succeeds), and 303 to the build page.
- `GET /console/builds/<id>`: DescribeImageBuild, the log so far and, once the build has ended, the version it
  registered (DescribeImageVersion). With htmx, `.../log?offset=` appends the lines written after `offset`
  (the log file's byte offset, as the SSE route's event ids) and `.../status` replaces the facts every 2 s
  until the build and its version are done; without JS the page refreshes itself (`<noscript>` meta refresh).
- `GET /console/images/<name>/versions/<n>`: DescribeImageVersion and ListAliases; once resolved, the
  compatibility report (Byoi.DescribeImageVersionReport): each rule with its outcome and what to do about a
  failure or warning, the R installations and the R packages, searched and sorted server-side (`?q=`,
  `?sort=name|version|library`, `?order=asc|desc`, `?page=`; htmx swaps only the table); and a "Compare with"
  form listing the image's other versions (ListImageVersions). While the version is CREATING,
  `.../status` is polled every 2 s (or the page refreshes itself without JS) until it is CREATED or
  CREATE_FAILED, and the page then reloads with its report.
- `GET /console/images/<name>/versions/<n>/diff?other=<m>`: Byoi.DiffImageVersions from the older of the two
  to the newer: R packages added, removed and changed, and the system facts that differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

import regex
from markupsafe import Markup, escape
from starlette.datastructures import UploadFile
from starlette.responses import Response

from byoi.build.context import ContextError, check_upload, clean_relative, context_has_file
from byoi.build.logstore import read_records, render
from byoi.console.pages import HEADERS, PREFIX, Page, Refused, Route, admin_route, explain, page_route, status_of
from byoi.errors import ByoiError
from byoi.inspect.diff import version_key

IMAGES = PREFIX + "/images"
BUILDS = PREFIX + "/builds"
VERSIONS = IMAGES + "/{name}/versions"
TERMINAL_VERSION = ("CREATED", "CREATE_FAILED", "DELETE_FAILED")
TERMINAL_BUILD = ("SUCCEEDED", "FAILED", "STOPPED")
PACKAGES_ID = "packages"  # the element the package search and sort links swap (HX-Target)
PACKAGES_PAGE = 100
OTHER_VERSIONS = 100  # versions offered in the "Compare with" list (the newest)
LOG_PAGE_BYTES = 1 << 20  # the most of a build log one page shows (the end of it)
SEPARATE_DOCKERFILE = ".byoi.Dockerfile"  # as `byoi build -f` packs a Dockerfile from outside the context
ARCHIVES = (".tar", ".tar.gz", ".tgz")
MAX_DOCKERFILE_BYTES = 1 << 20
OFFSET = regex.compile(r"[0-9]{1,18}")
BUILD_ARG = regex.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)", regex.DOTALL)
CLIENT_TOKEN = regex.compile(r"[0-9a-f-]{36}")
LABELS = {"ImageReference": "image reference", "Repository": "repository", "Tag": "tag", "BuildArgs": "build argument"}
# The build form's fields named by the API's messages (for aria-invalid).
BUILD_MEMBERS = {"Repository": "repository", "Tag": "tag", "BuildArgs": "build_args", "Dockerfile": "dockerfile"}
NOTICES = {"created": "The version was created: byoi is resolving its image and checking it."}
# What to do about a rule that failed (see docs/compatibility.md for the rules).
ADVICE = {
    "linux-platform": "Build the image for byoi's platform ({platform}), for example with docker build "
    "--platform {platform}, or name that platform's entry of a multi-platform image.",
    "r-present": "Install R in the image (for example FROM rocker/r-ver, or apt-get install r-base-core) "
    "or put its R on PATH.",
    "rstudio-server": "Install the open-source RStudio Server at /usr/lib/rstudio-server (for example FROM "
    "rocker/rstudio:4.4.2, or Posit's rstudio-server .deb).",
    "rstudio-socket": "Rebuild on RStudio Server 2024.12 or later (for example FROM rocker/rstudio:4.4.2), so "
    "that sessions listen on a Unix socket.",
    "non-root-user": "Add a user with a uid from 1000 to 65533, for example "
    "RUN useradd --create-home --uid 1000 rstudio.",
    "rstudio-urls": "Set them with ENV in the Dockerfile, or in the domain's RStudio settings (RStudioConnectUrl, "
    "RStudioPackageManagerUrl), which byoi passes to every session.",
    "image-size": "Make the image smaller: fewer layers, clean package caches in the same RUN step, a slimmer "
    "base image.",
    "reticulate": "Install the R package reticulate if your users call Python from R "
    "(RUN R -e 'install.packages(\"reticulate\")').",
    "entrypoint-override": "Nothing to do unless the image needs its ENTRYPOINT: byoi starts rserver itself, so "
    "move any setup into the image's build steps.",
}
PACKAGE_SORTS = ("name", "version", "library")


class Answer(dict[str, Any]):
    """An API answer for a template: a member the API left out (AWS omits absent members) reads as None, so
    templates test `answer.FailureReason` instead of `is defined` on each optional member."""

    def __missing__(self, key: str) -> None:
        return None


def answer(value: Any) -> Any:
    """`value` with every dict in it an Answer."""
    if isinstance(value, dict):
        return Answer({k: answer(v) for k, v in value.items()})
    if isinstance(value, list):
        return [answer(v) for v in value]
    return value


def image_path(name: str) -> str:
    return f"{IMAGES}/{name}"


def version_path(name: str, number: int) -> str:
    return f"{IMAGES}/{name}/versions/{number}"


def number_of(arn: str | None) -> int | None:
    """The version number at the end of an image version ARN (`...:image-version/<name>/<n>`)."""
    tail = (arn or "").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def megabytes(size: int | None) -> str:
    """A size in bytes as people read it: `812 B`, `12.3 kB`, `227.0 MB`, `1.2 GB`."""
    n = abs(size or 0)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def invalid_members(err: ByoiError, members: dict[str, str]) -> set[str]:
    """The form fields a validation error names (for aria-invalid)."""
    if err.code != "ValidationException":
        return set()
    return {form_field for member, form_field in members.items() if member in err.message}


# -- new version: the page and the reference ---------------------------------------------------------------


@dataclass
class NewForms:
    """What the new-version page shows: the two forms, what was typed, and an error next to one of them."""

    reference: str = ""
    client_token: str = field(default_factory=lambda: str(uuid.uuid4()))
    reference_error: str | None = None
    resolved: dict[str, Any] | None = None
    build: dict[str, str] = field(default_factory=dict)
    build_error: str | None = None
    build_invalid: set[str] = field(default_factory=set)


async def new_page(page: Page, name: str, forms: NewForms, status: int = 200) -> Response:
    """DescribeImage (a missing image is a 404 page) and Byoi.GetServerInfo (the registry builds push to)."""
    image, server = await asyncio.gather(page.call("DescribeImage", {"ImageName": name}), page.ext("GetServerInfo"))
    base = f"{IMAGES}/{name}/versions"
    build = {"repository": name.lower(), "tag": "latest", "dockerfile_text": "", "build_args": "", **forms.build}
    push_open = bool(forms.build_invalid & {"repository", "tag"}) or (build["repository"], build["tag"]) != (
        name.lower(),
        "latest",
    )
    return page.render(
        "version_new.html",
        status,
        name=image["ImageName"],
        image_href=image_path(name),
        new_href=base + "/new",
        build_href=base + "/build",
        resolve_href=base + "/resolve",
        registry=server.get("DefaultRegistry", ""),
        forms=forms,
        build=build,
        push_open=push_open,
        resolved_text=resolved_text(forms.resolved),
    )


def resolved_text(resolved: dict[str, Any] | None) -> str:
    """`resolves to sha256:… (linux/amd64, 42.0 MB)` for a Byoi.DescribeImageReference answer."""
    if not resolved:
        return ""
    facts = ", ".join(f for f in (resolved.get("Platform"), megabytes(resolved.get("CompressedSize"))) if f)
    return f"{resolved['ImageReference']} resolves to {resolved['Digest']} ({facts})"


async def new_version(page: Page) -> Response:
    name = page.request.path_params["name"]
    return await new_page(page, name, NewForms(reference=page.params.get("BaseImage", "")))


async def resolve(page: Page) -> Response:
    """The reference check: Byoi.DescribeImageReference as the principal. htmx swaps the answer in next to the
    field; a plain GET gets the whole new-version page with the answer there."""
    name = page.request.path_params["name"]
    reference = page.params.get("BaseImage", "").strip()
    forms = NewForms(reference=page.params.get("BaseImage", ""))
    status = 200
    if not reference:
        forms.reference_error = "Enter an image reference, for example team/rstudio:4.4 or host:5000/team/r@sha256:…"
        status = 400
    else:
        try:
            forms.resolved = await page.ext("DescribeImageReference", {"ImageReference": reference})
        except ByoiError as err:
            forms.reference_error, status = explain(err, LABELS), status_of(err)
    if page.is_htmx:  # the fragment answers 200 so htmx swaps it in; its words say what is wrong
        return page.render("version_resolve.html", forms=forms, resolved_text=resolved_text(forms.resolved))
    return await new_page(page, name, forms, status)


async def create_from_reference(page: Page) -> Response:
    """The reference is checked first (the same words as the live check), then CreateImageVersion."""
    name = page.request.path_params["name"]
    fields = await page.form("CreateImageVersion")
    typed = fields.get("BaseImage", "")
    token = fields.get("client_token", "")
    forms = NewForms(reference=typed, client_token=token if CLIENT_TOKEN.fullmatch(token) else str(uuid.uuid4()))
    if not typed.strip():
        forms.reference_error = "Enter an image reference."
        return await new_page(page, name, forms, 400)
    try:
        await page.ext("DescribeImageReference", {"ImageReference": typed.strip()})
        created = await page.call(
            "CreateImageVersion", {"ImageName": name, "BaseImage": typed.strip(), "ClientToken": forms.client_token}
        )
    except ByoiError as err:
        forms.reference_error = explain(err, LABELS)
        return await new_page(page, name, forms, status_of(err))
    number = number_of(created.get("ImageVersionArn"))
    return page.redirect(version_path(name, number or 0), notice="created")


# -- new version: building -----------------------------------------------------------------------------------


class FormError(ValueError):
    """A build form that cannot be sent as it is; `field` is the form field it is about."""

    def __init__(self, message: str, form_field: str | None = None) -> None:
        super().__init__(message)
        self.field = form_field


def parse_build_args(text: str) -> dict[str, str]:
    """`KEY=VALUE` a line (blank lines skipped) -> {KEY: VALUE}."""
    args: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = BUILD_ARG.fullmatch(line.strip())
        if not m:
            raise FormError(f"Build argument line {number} ({line.strip()[:60]!r}) is not KEY=VALUE.", "build_args")
        args[m["key"]] = m["value"]
    return args


def chosen(upload: UploadFile | None) -> bool:
    """Whether a file input was used (a browser sends an empty, nameless part for one left alone)."""
    return upload is not None and bool(upload.filename)


def _add_file(tar: tarfile.TarFile, name: str, fh: BinaryIO, size: int) -> None:
    """A regular file owned by root, mode 0644, as `byoi build` packs one."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    tar.addfile(info, fh)


def pack_context(
    folder: Path, dockerfile: bytes | None, uploads: list[tuple[str, BinaryIO]], limit: int
) -> tuple[Path, str]:
    """The build context as an uncompressed tar in `folder`, and the Dockerfile's path inside it.

    One uploaded `.tar`/`.tar.gz` is the context, checked and cleaned as the upload route does (check_upload);
    a Dockerfile given besides is added as `Dockerfile`, or `.byoi.Dockerfile` when the archive has one of
    its own (as `byoi build -f`). Other uploads are files at the context's top (their names checked)."""
    out = folder / "context.tar"
    archive = len(uploads) == 1 and uploads[0][0].lower().endswith(ARCHIVES)
    if archive:
        try:
            check_upload(uploads[0][1], out, limit)
        except ContextError as exc:
            raise FormError(f"The context archive cannot be used: {exc}", "context") from None
        if dockerfile is None:
            return out, "Dockerfile"
        name = SEPARATE_DOCKERFILE if context_has_file(out, "Dockerfile") else "Dockerfile"
        with tarfile.open(out, mode="a", format=tarfile.PAX_FORMAT) as tar:
            _add_file(tar, name, io.BytesIO(dockerfile), len(dockerfile))
        return out, name
    names: set[str] = set()
    total = 0
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for filename, fh in uploads:
            try:
                name = clean_relative(filename, "context file")
            except ContextError as exc:
                raise FormError(f"The {exc}.", "context") from None
            if name in names:
                raise FormError(f"Two context files are called {name}: send each file once.", "context")
            names.add(name)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            total += size
            if total > limit:
                raise FormError(f"The context files are larger than the limit of {limit} bytes.", "context")
            _add_file(tar, name, fh, size)
        if dockerfile is None:
            if "Dockerfile" not in names:
                raise FormError("Upload a Dockerfile or paste one.", "dockerfile")
            return out, "Dockerfile"
        name = SEPARATE_DOCKERFILE if "Dockerfile" in names else "Dockerfile"
        _add_file(tar, name, io.BytesIO(dockerfile), len(dockerfile))
    return out, name


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), path.stat().st_size


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, 1 << 20):
            yield chunk


async def dockerfile_of(texts: dict[str, str], files: dict[str, UploadFile]) -> bytes | None:
    """The Dockerfile as uploaded or pasted (one of the two), or None when only an archive brings one."""
    upload = files.get("dockerfile")
    pasted = texts.get("dockerfile_text", "").replace("\r\n", "\n")
    if chosen(upload) and pasted.strip():
        raise FormError("Give the Dockerfile once: upload a file or paste it, not both.", "dockerfile")
    if upload is not None and chosen(upload):
        data = await upload.read(MAX_DOCKERFILE_BYTES + 1)
        if len(data) > MAX_DOCKERFILE_BYTES:
            raise FormError(f"The Dockerfile is larger than {MAX_DOCKERFILE_BYTES // 1024} KiB.", "dockerfile")
        return data
    return pasted.encode() if pasted.strip() else None


async def start_build(page: Page) -> Response:
    """Multipart form -> policy (`StartImageBuild`) -> context tar -> BuildService.accept_context ->
    StartImageBuild with ImageName -> 303 to the build page. Errors re-render the new-version page."""
    name = page.request.path_params["name"]
    texts, files = await page.multipart("StartImageBuild")
    # page.multipart keeps one file per field; the context input sends several under one name.
    form = await page.request.form()
    uploads = [u for u in form.getlist("context") if isinstance(u, UploadFile) and u.filename]
    kept = {k: texts.get(k, "") for k in ("dockerfile_text", "build_args", "repository", "tag")}
    forms = NewForms(build={k: v for k, v in kept.items() if v})  # files cannot be kept: they are chosen again
    services = page.state["services"]
    try:
        await page.state["dispatcher"].authorize(page.principal, "StartImageBuild", {})
        build_args = parse_build_args(texts.get("build_args", ""))
        dockerfile = await dockerfile_of(texts, files)
        with tempfile.TemporaryDirectory(prefix="byoi-console-") as tmp:
            limit = services.builds.settings.context_limit
            parts = [(u.filename or "", u.file) for u in uploads]
            tar, dockerfile_name = await asyncio.to_thread(pack_context, Path(tmp), dockerfile, parts, limit)
            sha256, size = await asyncio.to_thread(sha256_of, tar)
            accepted = await services.builds.accept_context(file_chunks(tar), size, sha256)
        request: dict[str, Any] = {
            "ContextId": accepted["ContextId"],
            "Repository": texts.get("repository", "").strip() or name.lower(),
            "Tag": texts.get("tag", "").strip() or "latest",
            "Dockerfile": dockerfile_name,
            "ImageName": name,
            "ClientToken": str(uuid.uuid4()),
        }
        if build_args:
            request["BuildArgs"] = build_args
        started = await page.ext("StartImageBuild", request)
    except FormError as exc:
        forms.build_error, forms.build_invalid = str(exc), {exc.field} if exc.field else set()
        return await new_page(page, name, forms, 400)
    except ByoiError as err:
        forms.build_error = explain(err, LABELS)
        forms.build_invalid = invalid_members(err, BUILD_MEMBERS)
        return await new_page(page, name, forms, status_of(err))
    return page.redirect(f"{BUILDS}/{started['BuildId']}")


# -- the build page -----------------------------------------------------------------------------------------


def log_html(records: Iterable[tuple[int, dict[str, Any]]]) -> Markup:
    """Log records as the lines `byoi builds logs` prints, escaped; steps and statuses in bold."""
    out = []
    for _, record in records:
        text = render(record)
        if text is None:
            continue
        line = escape(text)
        out.append(
            Markup("<strong>{}</strong>\n").format(line) if record.get("k") in ("step", "status") else line + "\n"
        )
    return Markup("").join(out)


def log_start(path: Path) -> int:
    """Where a whole-page view of the log starts: its beginning, or its last LOG_PAGE_BYTES."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0
    return max(0, size - LOG_PAGE_BYTES)


async def build_facts(page: Page, build_id: str) -> dict[str, Any]:
    """DescribeImageBuild and, once it registered one, DescribeImageVersion of its version."""
    build = await page.ext("DescribeImageBuild", {"BuildId": build_id})
    number = number_of(build.get("ImageVersionArn"))
    version = None
    if number is not None and build.get("ImageName"):
        try:
            version = await page.call("DescribeImageVersion", {"ImageName": build["ImageName"], "Version": number})
        except ByoiError:  # deleted since: the build's facts are still worth showing
            number = None
    done = build["BuildStatus"] in TERMINAL_BUILD
    live = not done or (version is not None and version["ImageVersionStatus"] not in TERMINAL_VERSION)
    return {
        "build": answer(build),
        "version": answer(version),
        "version_href": version_path(build["ImageName"], number) if number is not None and version else None,
        "image_href": image_path(build["ImageName"]) if build.get("ImageName") else None,
        "live": live,
        "status_href": f"{BUILDS}/{build_id}/status",
    }


def tail(build_id: str, offset: int, ended: bool, immediate: bool = False) -> dict[str, Any]:
    """The element that fetches the next lines (`ended`: the build had ended at the last read)."""
    query = f"offset={offset}" + ("&ended=1" if ended else "")
    return {"href": f"{BUILDS}/{build_id}/log?{query}", "delay": "200ms" if immediate else "1s"}


async def show_build(page: Page) -> Response:
    build_id = page.request.path_params["build_id"]
    facts = await build_facts(page, build_id)
    path = page.state["services"].builds.log_path(build_id)
    start = await asyncio.to_thread(log_start, path)
    records, offset = await asyncio.to_thread(read_records, path, start, 2 * LOG_PAGE_BYTES)
    finished = any(r.get("k") == "status" and r.get("s") in TERMINAL_BUILD for _, r in records)
    ended = facts["build"]["BuildStatus"] in TERMINAL_BUILD
    return page.render(
        "build.html",
        **facts,
        build_id=build_id,
        lines=log_html(records),
        cut=start > 0,
        tail=None if finished else tail(build_id, offset, ended),
    )


async def build_log(page: Page) -> Response:
    """The lines after `?offset=` and the next tail, or none once the build's final status line is read (or it
    had ended and nothing came since the last read)."""
    build_id = page.request.path_params["build_id"]
    raw = page.params.get("offset", "0")
    if not OFFSET.fullmatch(raw):
        raise Refused(400, "Request refused", "offset is not a byte offset in the log: 1 to 18 digits 0-9.")
    build = await page.ext("DescribeImageBuild", {"BuildId": build_id})
    path = page.state["services"].builds.log_path(build_id)
    records, offset = await asyncio.to_thread(read_records, path, int(raw), LOG_PAGE_BYTES)
    finished = any(r.get("k") == "status" and r.get("s") in TERMINAL_BUILD for _, r in records)
    ended = build["BuildStatus"] in TERMINAL_BUILD
    if ended and not records and page.params.get("ended") == "1":
        finished = True  # the final status line was written before the status was read twice: nothing follows
    following = None if finished else tail(build_id, offset, ended, immediate=bool(records))
    return page.render("build_log.html", lines=log_html(records), tail=following)


async def build_status(page: Page) -> Response:
    build_id = page.request.path_params["build_id"]
    try:
        facts = await build_facts(page, build_id)
    except ByoiError:  # no longer visible (or its version was deleted): the whole page says which
        return Response(status_code=204, headers={**HEADERS, "HX-Refresh": "true"})
    return page.render("build_status.html", **facts)


# -- the version page ------------------------------------------------------------------------------------------


async def version_facts(page: Page, name: str, number: int) -> dict[str, Any]:
    """DescribeImageVersion and ListAliases (the aliases of this version)."""
    key = {"ImageName": name, "Version": number}
    version, aliases = await asyncio.gather(
        page.call("DescribeImageVersion", key), page.call("ListAliases", {**key, "MaxResults": 100})
    )
    return {
        "name": name,
        "number": number,
        "version": answer(version),
        "aliases": aliases.get("SageMakerImageVersionAliases") or [],
        "terminal": version["ImageVersionStatus"] in TERMINAL_VERSION,
        "status_href": version_path(name, number) + "/status",
    }


async def other_versions(page: Page, name: str, number: int) -> list[dict[str, Any]]:
    """The image's newest OTHER_VERSIONS versions but this one, for the "Compare with" list."""
    listed = await page.call(
        "ListImageVersions",
        {"ImageName": name, "SortBy": "VERSION", "SortOrder": "DESCENDING", "MaxResults": OTHER_VERSIONS},
    )
    return [v for v in listed.get("ImageVersions") or [] if v["Version"] != number]


@dataclass
class PackageQuery:
    """The package table's search, sort and page, from the query string (anything unknown is the default)."""

    q: str = ""
    sort: str = "name"
    order: str = "asc"
    page: int = 1

    @classmethod
    def of(cls, params: Any) -> PackageQuery:
        sort = params.get("sort", "name")
        order = params.get("order", "asc")
        number = params.get("page", "1")
        return cls(
            q=params.get("q", "").strip()[:100],
            sort=sort if sort in PACKAGE_SORTS else "name",
            order=order if order in ("asc", "desc") else "asc",
            page=int(number) if number.isdigit() and 0 < len(number) < 7 and int(number) > 0 else 1,
        )

    def href(self, base: str, **changes: Any) -> str:
        values = {"q": self.q, "sort": self.sort, "order": self.order, "page": self.page, **changes}
        query = {k: v for k, v in values.items() if v and not (k == "page" and v == 1)}
        return base + ("?" + urlencode(query) if query else "")


def package_table(packages: list[dict[str, Any]], query: PackageQuery, base: str) -> dict[str, Any]:
    """The rows to show: matching `q` (in the name or library, any case), sorted, one page of them."""
    needle = query.q.casefold()
    rows = [p for p in packages if needle in p.get("Name", "").casefold() or needle in p.get("Library", "").casefold()]
    keys = {
        "name": lambda p: (p.get("Name", "").casefold(), p.get("Library", "")),
        "version": lambda p: (version_key(p.get("Version", "")), p.get("Name", "").casefold()),
        "library": lambda p: (p.get("Library", ""), p.get("Name", "").casefold()),
    }
    rows.sort(key=keys[query.sort], reverse=query.order == "desc")
    pages = max(1, -(-len(rows) // PACKAGES_PAGE))
    current = min(query.page, pages)
    columns = []
    for col in PACKAGE_SORTS:
        order = "desc" if query.sort == col and query.order == "asc" else "asc"
        columns.append(
            {
                "key": col,
                "label": col.capitalize(),
                "href": query.href(base, sort=col, order=order, page=1),
                "sort": ("ascending" if query.order == "asc" else "descending") if query.sort == col else None,
            }
        )
    return {
        "rows": rows[(current - 1) * PACKAGES_PAGE : current * PACKAGES_PAGE],
        "matching": len(rows),
        "total": len(packages),
        "columns": columns,
        "query": query,
        "base": base,
        "previous": query.href(base, page=current - 1) if current > 1 else None,
        "next": query.href(base, page=current + 1) if current < pages else None,
        "current": current,
        "pages": pages,
    }


def rule_rows(rules: list[dict[str, Any]], platform: str) -> list[dict[str, Any]]:
    """Each rule with a one-word outcome (PASS, FAIL for a required rule, WARN, NOTE, SKIPPED) and, for one
    that did not pass, what to do."""
    rows = []
    for rule in rules:
        failed = rule.get("Outcome") == "FAILED"
        level = rule.get("Level", "")
        word = "PASS" if rule.get("Outcome") == "PASSED" else "SKIPPED"
        if failed:
            word = {"required": "FAIL", "warning": "WARN"}.get(level, "NOTE")
        advice = ADVICE.get(rule.get("Name", ""), "").format(platform=platform) if failed else ""
        rows.append({**rule, "word": word, "advice": advice})
    return rows


async def report_of(page: Page, name: str, number: int) -> tuple[dict[str, Any] | None, str | None]:
    """Byoi.DescribeImageVersionReport's report, or None and why there is none (still resolving, failed first)."""
    try:
        found = await page.ext("DescribeImageVersionReport", {"ImageName": name, "Version": number})
    except ByoiError as err:
        if err.code != "ResourceNotFound":
            raise
        return None, err.message
    return answer(found.get("Report") or {}), None


async def show_version(page: Page) -> Response:
    name, number = page.request.path_params["name"], page.request.path_params["number"]
    facts = await version_facts(page, name, number)
    base = version_path(name, number)
    query = PackageQuery.of(page.params)
    report, missing = (None, None)
    others: list[dict[str, Any]] = []
    if facts["terminal"]:
        (report, missing), others = await asyncio.gather(
            report_of(page, name, number), other_versions(page, name, number)
        )
    packages = package_table((report or {}).get("RPackages") or [], query, base)
    if page.is_htmx and page.request.headers.get("HX-Target") == PACKAGES_ID:
        return page.render("version_packages.html", packages=packages, oob=True)
    server = await page.ext("GetServerInfo")
    return page.render(
        "version.html",
        **facts,
        notice=NOTICES.get(page.params.get("notice", "")),
        image_href=image_path(name),
        new_href=f"{IMAGES}/{name}/versions/new",
        diff_href=base + "/diff",
        report=report,
        missing=missing,
        rules=rule_rows((report or {}).get("Rules") or [], server.get("Platform", "linux/amd64")),
        packages=packages,
        oob=False,
        others=others,
        megabytes=megabytes,
    )


async def version_status(page: Page) -> Response:
    """The status facts, polled while CREATING; once the version is done, htmx reloads the whole page."""
    name, number = page.request.path_params["name"], page.request.path_params["number"]
    try:
        facts = await version_facts(page, name, number)
    except ByoiError:  # deleted meanwhile, or no longer visible: the whole page says which
        return Response(status_code=204, headers={**HEADERS, "HX-Refresh": "true"})
    response = page.render("version_status.html", **facts)
    if facts["terminal"]:
        response.headers["HX-Refresh"] = "true"
    return response


def diff_rows(diff: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The changed packages (upgraded, then downgraded, each saying which) and the environment's changes as
    (change, variable, values) rows."""
    if not diff:
        return [], []
    changed = [{**c, "Change": "upgraded"} for c in diff.get("PackagesUpgraded") or []]
    changed += [{**c, "Change": "downgraded"} for c in diff.get("PackagesDowngraded") or []]
    env = [("added", e, "") for e in diff.get("EnvAdded") or []]
    env += [("removed", e, "") for e in diff.get("EnvRemoved") or []]
    env += [("changed", c["Name"], f"{c.get('From')} → {c.get('To')}") for c in diff.get("EnvChanged") or []]
    return changed, env


async def diff_versions(page: Page) -> Response:
    """Byoi.DiffImageVersions from the older of the two versions to the newer."""
    name, number = page.request.path_params["name"], page.request.path_params["number"]
    others = await other_versions(page, name, number)
    raw = page.params.get("other", "")
    error, status, diff = None, 200, None
    if not raw.isdigit() or not 0 < len(raw) < 10 or int(raw) < 1:
        error, status = "Choose the version to compare with.", 400
    else:
        low, high = sorted((number, int(raw)))
        try:
            diff = await page.ext("DiffImageVersions", {"ImageName": name, "FromVersion": low, "ToVersion": high})
        except ByoiError as err:
            error, status = explain(err), status_of(err)
    return page.render(
        "version_diff.html",
        status,
        name=name,
        number=number,
        other=raw,
        others=others,
        diff=answer(diff),
        changed=answer(diff_rows(diff)[0]),
        env=diff_rows(diff)[1],
        error=error,
        image_href=image_path(name),
        version_href=version_path(name, number),
        diff_href=version_path(name, number) + "/diff",
        version_path=version_path,
        megabytes=megabytes,
    )


async def versions_root(page: Page) -> Response:
    """`/console/images/<name>/versions`: the image's page lists them."""
    return page.redirect(image_path(page.request.path_params["name"]))


ROUTES: list[Route] = [
    (VERSIONS, "GET", page_route(versions_root)),
    (VERSIONS + "/new", "GET", admin_route(new_version)),
    (VERSIONS + "/new", "POST", page_route(create_from_reference)),
    (VERSIONS + "/resolve", "GET", page_route(resolve)),
    (VERSIONS + "/build", "POST", page_route(start_build)),
    (VERSIONS + "/{number:int}", "GET", page_route(show_version)),
    (VERSIONS + "/{number:int}/status", "GET", page_route(version_status)),
    (VERSIONS + "/{number:int}/diff", "GET", page_route(diff_versions)),
    (BUILDS + "/{build_id}", "GET", page_route(show_build)),
    (BUILDS + "/{build_id}/log", "GET", page_route(build_log)),
    (BUILDS + "/{build_id}/status", "GET", page_route(build_status)),
]
