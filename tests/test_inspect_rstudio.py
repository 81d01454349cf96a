"""RStudio Server in an image, on synthetic trees: its version and whether rserver can listen on a Unix
socket (`--www-socket`, 2024.12 and later; the rstudio-socket rule), and Posit Workbench session images
(rsession without rserver, as Posit's r-session-complete), which the rstudio-server rule names plainly."""

from __future__ import annotations

from typing import Any

import pytest

from byoi.inspect.config import DEFAULT_LEVELS, InspectionConfig, parse_inspection_config
from byoi.inspect.facts import image_facts, parse_rstudio_version, socket_support
from byoi.inspect.rules import evaluate, failure_reason
from tests.support.layers import Layer, base_files, r_install
from tests.test_inspect_units import tree_of

CONFIG = {"os": "linux", "architecture": "amd64", "config": {}}
RSERVER = "usr/lib/rstudio-server/bin/rserver"
RSESSION = "usr/lib/rstudio-server/bin/rsession"
VERSION = "usr/lib/rstudio-server/VERSION"
NO_SOCKET = (
    "RStudio Server {} cannot listen on a Unix socket (--www-socket needs 2024.12 or later): byoi reaches it on "
    "a port published on the host's 127.0.0.1, where any local user of the Docker host can connect to it without "
    "signing in. Rebuild on RStudio Server 2024.12 or later (for example FROM rocker/rstudio:4.4.2)"
)
SOCKET = "RStudio Server {} listens on a Unix socket (--www-socket): byoi publishes no port for it"
UNKNOWN = ": byoi will start rserver with --www-socket, and RStudio Server older than 2024.12 will then fail to start"
WORKBENCH = (
    "This is a Posit Workbench session image (/usr/lib/rstudio-server/bin/rsession without rserver, as "
    "r-session-complete): byoi runs the open-source RStudio Server, which this image does not have. Build a "
    "compatible image, for example FROM rocker/rstudio:{}, or install rstudio-server from Posit's open-source .deb"
)


def r_layer(**r: Any) -> Layer:
    """A Debian tree with a non-root user and R (r_install's arguments), executables 0755."""
    layer = Layer().files(base_files([("ruser", 1000)]))
    for path, content in r_install(**r).items():
        layer.file(path, content, 0o755 if "/bin/" in path else 0o644)
    return layer


def with_rserver(version: str | None) -> Layer:
    """R plus rserver; `version` is the VERSION file's content (None: no VERSION file)."""
    layer = r_layer().file(RSERVER, "#!/bin/sh\n", 0o755)
    return layer if version is None else layer.file(VERSION, version)


def workbench_session(**r: Any) -> Layer:
    """As Posit's r-session-complete: R in /opt/R/<version>, the Workbench session components (rsession and a
    VERSION file) in /usr/lib/rstudio-server, and no rserver."""
    r = {"home": "opt/R/4.4.2/lib/R", "version": "4.4.2", "binary": None, **r}
    return r_layer(**r).file(RSESSION, "#!/bin/sh\n", 0o755).file(VERSION, "2024.12.1+563\n")


def facts_of(*layers: Layer) -> dict[str, Any]:
    return image_facts(tree_of(*layers), CONFIG)


def rules_of(facts: dict[str, Any], config: InspectionConfig | None = None) -> dict[str, dict[str, Any]]:
    return {o["Name"]: o for o in evaluate(facts, config or InspectionConfig(), "linux/amd64")}


# -- Posit Workbench session images --------------------------------------------------------------------


def test_a_workbench_session_image_fails_rstudio_server_with_a_plain_message():
    facts = facts_of(workbench_session())
    assert facts["RStudioServer"] is None
    assert facts["RSession"] == {
        "Path": "/usr/lib/rstudio-server/bin/rsession",
        "Version": "2024.12.1+563",
        "Executable": True,
    }
    rules = rules_of(facts)
    server = rules["rstudio-server"]
    assert (server["Level"], server["Outcome"]) == ("required", "FAILED")
    assert server["Message"] == WORKBENCH.format("4.4.2")  # the image's own R version in the example
    assert (
        failure_reason(list(rules.values()))
        == f"Not compatible with RStudio: {WORKBENCH.format('4.4.2')} [rstudio-server]"
    )
    # Nothing for the socket rule to judge: it passes and points at rstudio-server.
    socket = rules["rstudio-socket"]
    assert (socket["Outcome"], socket["Message"]) == ("PASSED", "no RStudio Server to start (see rstudio-server)")


def test_a_workbench_session_image_whose_r_version_is_unknown_names_a_placeholder():
    layer = Layer().files(base_files([("ruser", 1000)])).file("usr/local/bin/R", "#!/bin/sh\n", 0o755)
    facts = facts_of(layer.file(RSESSION, "#!/bin/sh\n", 0o755))  # R on PATH only: its version is unknown
    assert facts["RInstallations"] == [{"Binary": "/usr/local/bin/R"}] and facts["RSession"]["Version"] is None
    assert rules_of(facts)["rstudio-server"]["Message"] == WORKBENCH.format("<R version>")


def test_without_rserver_or_rsession_rstudio_server_is_just_missing():
    facts = facts_of(r_layer())
    assert facts["RStudioServer"] is None and facts["RSession"] is None
    assert rules_of(facts)["rstudio-server"]["Message"] == (
        "RStudio Server is missing: /usr/lib/rstudio-server/bin/rserver does not exist"
    )


def test_open_source_rstudio_server_has_rsession_too_and_is_not_a_workbench_image():
    layer = with_rserver("2024.12.0+467\n").file(RSESSION, "#!/bin/sh\n", 0o755)
    facts = facts_of(layer)
    assert facts["RSession"] == {
        "Path": "/usr/lib/rstudio-server/bin/rsession",
        "Version": "2024.12.0+467",
        "Executable": True,
    }
    server = rules_of(facts)["rstudio-server"]
    assert (server["Outcome"], server["Message"]) == (
        "PASSED",
        "RStudio Server 2024.12.0+467 at /usr/lib/rstudio-server/bin/rserver",
    )


# -- RStudio Server's version and the Unix socket ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "version", "supported"),
    [
        ("2024.12.0+467\n", "2024.12.0+467", True),  # the first release with --www-socket
        ("2024.09.1+394\n", "2024.09.1+394", False),
        ("2023.06.0+421\n", "2023.06.0+421", False),
        ("2026.09.0+byoi.standin\n", "2026.09.0+byoi.standin", True),  # the test stand-in's
        ("garbage\n", "garbage", None),
        (None, None, None),  # no VERSION file
        ("2025.01.0+1\n", "2025.01.0+1", True),  # a later year with an earlier month
        ("2024.11.9+999\n", "2024.11.9+999", False),
        ("2024.12.0-daily+12\nsecond line\n", "2024.12.0-daily+12", True),
        ("1.4.1717\n", "1.4.1717", False),  # RStudio 1.x, before the YYYY.MM numbers
        ("2024.12\n", "2024.12", None),  # no patch number
        ("\n  \n", None, None),  # a blank VERSION file: no version (and no crash)
    ],
    ids=lambda v: repr(v.strip()) if isinstance(v, str) else repr(v),
)
def test_socket_support_from_the_version_file(content, version, supported):
    facts = facts_of(with_rserver(content))
    assert facts["RStudioServer"] == {
        "Path": "/usr/lib/rstudio-server/bin/rserver",
        "Version": version,
        "Executable": True,
        "SupportsSocket": supported,
    }
    assert socket_support(facts) is supported


@pytest.mark.parametrize(
    ("content", "outcome", "message"),
    [
        ("2024.12.0+467\n", "PASSED", SOCKET.format("2024.12.0+467")),
        ("2024.09.1+394\n", "FAILED", NO_SOCKET.format("2024.09.1+394")),
        ("2023.06.0+421\n", "FAILED", NO_SOCKET.format("2023.06.0+421")),
        ("2026.09.0+byoi.standin\n", "PASSED", SOCKET.format("2026.09.0+byoi.standin")),
        ("garbage\n", "PASSED", "RStudio Server's version 'garbage' is not YYYY.MM.patch" + UNKNOWN),
        (None, "PASSED", "RStudio Server's version is unknown (no VERSION file in /usr/lib/rstudio-server)" + UNKNOWN),
    ],
    ids=["2024.12.0+467", "2024.09.1+394", "2023.06.0+421", "standin", "garbage", "no-file"],
)
def test_the_rstudio_socket_rule_warns_only_when_rserver_is_known_to_be_too_old(content, outcome, message):
    rules = rules_of(facts_of(with_rserver(content)))
    assert rules["rstudio-socket"] == {
        "Name": "rstudio-socket",
        "Level": "warning",
        "Outcome": outcome,
        "Message": message,
    }
    assert rules["rstudio-server"]["Outcome"] == "PASSED"
    assert failure_reason(list(rules.values())) is None  # a warning: the image stays compatible


def test_the_version_file_under_resources_counts_too():
    layer = r_layer().file(RSERVER, "#!/bin/sh\n", 0o755).file("usr/lib/rstudio-server/resources/VERSION", "2023.06.0")
    facts = facts_of(layer)
    assert facts["RStudioServer"]["Version"] == "2023.06.0" and facts["RStudioServer"]["SupportsSocket"] is False


def test_socket_support_reads_any_report_even_one_stored_before_supports_socket():
    assert socket_support({}) is None
    assert socket_support({"Status": "FAILED", "Compatible": False}) is None
    assert socket_support({"RStudioServer": None}) is None
    old = {"Path": "/usr/lib/rstudio-server/bin/rserver", "Version": "2023.06.0+421", "Executable": True}
    assert socket_support({"RStudioServer": old}) is False
    assert socket_support({"RStudioServer": {**old, "Version": "2024.12.1+563"}}) is True
    assert socket_support({"RStudioServer": {**old, "Version": None}}) is None
    assert socket_support({"RStudioServer": {**old, "Version": 2024}}) is None
    assert parse_rstudio_version(" 2024.12.0+467 ") == (2024, 12, 0)
    assert parse_rstudio_version("2022.07.2+576.pro12") == (2022, 7, 2)
    assert parse_rstudio_version("2024.12.0 467") is None and parse_rstudio_version("v2024.12.0") is None


def test_the_rstudio_socket_rule_is_a_warning_after_rstudio_server_and_operators_can_change_it():
    assert list(DEFAULT_LEVELS) == [
        "linux-platform",
        "r-present",
        "rstudio-server",
        "rstudio-socket",
        "non-root-user",
        "rstudio-urls",
        "image-size",
        "reticulate",
        "entrypoint-override",
    ]
    assert DEFAULT_LEVELS["rstudio-socket"] == "warning"
    assert list(rules_of(facts_of(r_layer()))) == list(DEFAULT_LEVELS)
    old = facts_of(with_rserver("2023.06.0+421\n"))
    strict = parse_inspection_config({"rules": {"rstudio-socket": "required"}})
    assert failure_reason(list(rules_of(old, strict).values())) == (
        f"Not compatible with RStudio: {NO_SOCKET.format('2023.06.0+421')} [rstudio-socket]"
    )
    off = rules_of(old, parse_inspection_config({"rules": {"rstudio-socket": "off"}}))["rstudio-socket"]
    assert (off["Outcome"], off["Message"]) == ("SKIPPED", "turned off")
