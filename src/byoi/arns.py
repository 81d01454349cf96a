"""ARN formats (reference/sagemaker-api.md section 4). The one place that knows their shape."""

from __future__ import annotations

from dataclasses import dataclass

import regex


@dataclass(frozen=True)
class Partition:
    region: str
    account_id: str

    def _prefix(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}"

    def image(self, name: str) -> str:
        return f"{self._prefix()}:image/{name}"

    def image_version(self, name: str, version: int) -> str:
        # The model's pattern for image-version ARNs is lower-case only, although image names may have
        # upper case; byoi lower-cases the name here and keeps image names unique ignoring case.
        return f"{self._prefix()}:image-version/{name.lower()}/{version}"

    def app_image_config(self, name: str) -> str:
        return f"{self._prefix()}:app-image-config/{name}"

    def domain(self, domain_id: str) -> str:
        return f"{self._prefix()}:domain/{domain_id}"

    def user_profile(self, domain_id: str, name: str) -> str:
        return f"{self._prefix()}:user-profile/{domain_id}/{name}"

    def apps_of(self, domain_id: str, profile: str | None = None) -> str:
        """The ARN prefix of every app of a domain, or of one of its user profiles."""
        return f"{self._prefix()}:app/{domain_id}" + (f"/{profile}" if profile else "")

    def app(self, domain_id: str, profile: str, app_type: str, app_name: str) -> str:
        return f"{self._prefix()}:app/{domain_id}/{profile}/{app_type}/{app_name}"


_ARN = regex.compile(
    r"arn:aws[a-z\-]*:sagemaker:(?P<region>[^:]*):(?P<account>[0-9]{12}):(?P<kind>[a-z\-]+)/(?P<rest>.+)"
)


@dataclass(frozen=True)
class ParsedArn:
    region: str
    account_id: str
    kind: str
    parts: tuple[str, ...]


def parse(arn: str) -> ParsedArn | None:
    """Split a SageMaker ARN into its resource kind and path parts; None when it is not one."""
    m = _ARN.fullmatch(arn)
    if not m:
        return None
    return ParsedArn(m["region"], m["account"], m["kind"], tuple(m["rest"].split("/")))


_VERSION_NUMBER = regex.compile(r"[0-9]{1,18}")  # ASCII digits only ("²".isdigit() is True), and fits in 64 bits


def version_number(text: str) -> int | None:
    """A version number as written in an ARN or a token, or None when it is not one a store could hold."""
    return int(text) if _VERSION_NUMBER.fullmatch(text) else None


def image_version_of(parsed: ParsedArn) -> tuple[str, int] | None:
    """(image name, version) of a parsed image-version ARN, or None when its path is not `<name>/<number>`."""
    if len(parsed.parts) != 2:
        return None
    number = version_number(parsed.parts[1])
    return None if number is None else (parsed.parts[0], number)
