"""`byoi versions report` and `byoi versions diff`: an image version's compatibility report, and what
changed between two versions. Registered onto the `versions` sub-app by `register(versions_app)`.

Also the `--inspection-config FILE` server option (rules on/off and levels, limits).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from byoi.cli.common import EndpointUrl, Output, Profile, call, console, literal, print_document, version_args
from byoi.config import Settings

InspectionConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--inspection-config",
        envvar="BYOI_INSPECTION_CONFIG",
        help="TOML file: inspection rules (off|info|warning|required) and limits.",
    ),
]


def with_inspection(settings: Settings, path: Path | None) -> Settings:
    """Settings with the inspection config read from `path` (unchanged when None or empty)."""
    if not path or not str(path):
        return settings
    from byoi.inspect.config import load_inspection_config

    try:
        return replace(settings, inspection=load_inspection_config(path))
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--inspection-config") from None


def _selector(value: str, prefix: str = "") -> dict[str, Any]:
    """A version given as a number or an alias."""
    if value.isdigit():
        return {f"{prefix}Version": int(value)}
    return {f"{prefix}Alias": value}


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _print_report(result: dict[str, Any]) -> None:
    """The report as text. Everything the server says goes through `literal`: a FailureReason names each failed
    rule in [brackets], and names, paths and messages come from the image."""
    from rich.table import Table

    r = result.get("Report", {})
    verdict = "[green]compatible[/green]" if r.get("Compatible") else "[red]not compatible[/red]"
    console.print(
        f"[bold]{literal(result['ImageName'])}[/bold] version {result['Version']} "
        f"({literal(result['ImageVersionStatus'])}): {verdict}"
    )
    if r.get("FailureReason"):
        console.print(f"  {literal(r['FailureReason'])}")
    if r.get("Status") != "COMPLETED":
        return
    os_name = (r.get("Os") or {}).get("PrettyName") or "unknown OS"
    console.print(f"  image     {literal(r.get('ContainerImage'))}")
    console.print(
        f"  platform  {literal(r.get('Platform'))}, {literal(os_name)}, {r.get('LayerCount')} layers, "
        f"{_size(r.get('CompressedSize'))} compressed, {_size(r.get('UncompressedSize'))} uncompressed"
    )
    for install in r.get("RInstallations") or []:
        where = install.get("Home") or install.get("Binary")
        console.print(f"  R         {literal(install.get('Version') or '?')} at {literal(where)}")
    server = r.get("RStudioServer")
    if server:
        console.print(
            f"  RStudio   {literal(server.get('Version') or 'version unknown')} at {literal(server.get('Path'))}"
        )
    users = [u["Name"] for u in r.get("Users") or [] if 1000 <= u.get("Uid", 0) < 65534]
    console.print(f"  users     {literal(', '.join(users) or '(no non-root user)')}")
    rules = Table("rule", "level", "outcome", "message")
    for o in r.get("Rules") or []:
        style = {"PASSED": "green", "FAILED": "red" if o["Level"] == "required" else "yellow"}.get(o["Outcome"], "dim")
        rules.add_row(
            literal(o["Name"]),
            literal(o["Level"]),
            f"[{style}]{literal(o['Outcome'])}[/{style}]",
            literal(o["Message"]),
        )
    console.print(rules)
    packages = Table("package", "version", "library", title=f"{len(r.get('RPackages') or [])} R packages")
    for p in r.get("RPackages") or []:
        packages.add_row(literal(p["Name"]), literal(p["Version"]), literal(p["Library"]))
    console.print(packages)


def _print_diff(d: dict[str, Any]) -> None:
    """The diff as text; names and values come from the images (ENV X=[a] is one), so all go through `literal`."""
    from rich.table import Table

    name, a, b = literal(d["ImageName"]), d["From"]["Version"], d["To"]["Version"]
    console.print(f"[bold]{name}[/bold]: version {a} -> {b}")
    rv = d.get("RVersion") or {}
    changed = "" if rv.get("Changed") else " (unchanged)"
    console.print(f"  R         {literal(rv.get('From'))} -> {literal(rv.get('To'))}{changed}")
    size = d.get("UncompressedSize") or {}
    console.print(f"  size      {_size(size.get('From'))} -> {_size(size.get('To'))} ({size.get('Delta', 0):+,} bytes)")
    table = Table("change", "package / name", "from", "to")

    def row(change: str, *cells: Any) -> None:
        table.add_row(change, *[literal(c) for c in cells])

    for p in d.get("PackagesAdded") or []:
        row("[green]added[/green]", p["Name"], "", p["Version"])
    for p in d.get("PackagesRemoved") or []:
        row("[red]removed[/red]", p["Name"], p["Version"], "")
    for kind in ("Upgraded", "Downgraded"):
        for p in d.get(f"Packages{kind}") or []:
            row(kind.lower(), p["Name"], p["From"], p["To"])
    for e in d.get("EnvAdded") or []:
        row("env added", e.split("=", 1)[0], "", e.split("=", 1)[1])
    for e in d.get("EnvRemoved") or []:
        row("env removed", e.split("=", 1)[0], e.split("=", 1)[1], "")
    for e in d.get("EnvChanged") or []:
        row("env changed", e["Name"], e["From"], e["To"])
    for u in d.get("UsersAdded") or []:
        row("user added", u, "", "")
    for u in d.get("UsersRemoved") or []:
        row("user removed", u, "", "")
    for r in d.get("RulesChanged") or []:
        row("rule", r["Name"], r.get("From") or "", r["To"])
    console.print(table if table.row_count else "  no package, environment, user or rule changes")


def register(versions_app: typer.Typer) -> None:
    @versions_app.command("report")
    def report(
        image: str,
        version: Annotated[int | None, typer.Option("--version", "-v")] = None,
        alias: Annotated[str | None, typer.Option("--alias")] = None,
        output: Output = "table",
        endpoint_url: EndpointUrl = None,
        profile: Profile = None,
    ) -> None:
        """Show a version's compatibility report: R, RStudio Server, users, packages, each rule's outcome."""
        args = version_args(image, version, alias)
        result = call(endpoint_url, profile, lambda c: c.describe_image_version_report(**args), extension=True)
        if output != "table":
            print_document(result, output)
        else:
            _print_report(result)

    @versions_app.command("diff")
    def diff(
        image: str,
        a: Annotated[str, typer.Argument(help="The older version: a number or an alias.")],
        b: Annotated[str, typer.Argument(help="The newer version: a number or an alias.")],
        output: Output = "table",
        endpoint_url: EndpointUrl = None,
        profile: Profile = None,
    ) -> None:
        """What changed from version A to version B: R version, packages, environment, users, size."""
        args = {"ImageName": image, **_selector(a, "From"), **_selector(b, "To")}
        result = call(endpoint_url, profile, lambda c: c.diff_image_versions(**args), extension=True)
        if output != "table":
            print_document(result, output)
        else:
            _print_diff(result)
