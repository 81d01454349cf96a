"""Which principal may call which operation on which resource: the one table, checked in one place
(`byoi.api.dispatch`, through `byoi.services.access.AccessService`).

Administrators may call everything. A user is bound to one user profile in one domain and may call only the
operations below, each with the rule that ties the request's resource to them. Every other operation is
refused to users. Lists marked SCOPED are not refused: the service filters them to what the caller may see
(`byoi.services.access.Visibility`), so paging still returns each visible item exactly once.

The table is pure data, so it is tested as data (`tests/test_access_units.py`) and read by the docs.
"""

from __future__ import annotations

from enum import Enum


class Rule(Enum):
    ANYONE = "any signed-in principal"
    OWN_PROFILE = "the request's DomainId and UserProfileName are the user's own"
    OWN_DOMAIN = "the request's DomainId is the user's; a UserProfileName, when given, is their own"
    ATTACHED_IMAGE = "the request's ImageName is attached to the user's domain or profile"
    SCOPED = "allowed; the answer lists only what the user may see"
    OWN_PROFILE_OR_SHARED_APP = (
        "the request's DomainId and UserProfileName are the user's own, or it names their domain's shared "
        "RStudioServerPro app (UserProfileName domain-shared, AppName default)"
    )


# The domain's own app (SageMaker's pseudo user profile `domain-shared`): users may read it, never change it.
SHARED_APP_PROFILE = "domain-shared"
SHARED_APP_TYPE = "RStudioServerPro"
SHARED_APP_NAME = "default"


USER_RULES: dict[str, Rule] = {
    # What this server is.
    "GetServerInfo": Rule.ANYONE,
    # The catalog: only images attached to the user's domain or profile.
    "ListImages": Rule.SCOPED,
    "DescribeImage": Rule.ATTACHED_IMAGE,
    "DescribeImageVersion": Rule.ATTACHED_IMAGE,
    "ListImageVersions": Rule.ATTACHED_IMAGE,
    "ListAliases": Rule.ATTACHED_IMAGE,
    "DescribeImageVersionReport": Rule.ATTACHED_IMAGE,
    "DiffImageVersions": Rule.ATTACHED_IMAGE,
    # Their domain and their own profile.
    "ListDomains": Rule.SCOPED,
    "DescribeDomain": Rule.OWN_DOMAIN,
    "ListUserProfiles": Rule.SCOPED,
    "DescribeUserProfile": Rule.OWN_PROFILE,
    "DescribeAttachedImages": Rule.OWN_DOMAIN,
    "ListEffectiveImages": Rule.OWN_DOMAIN,
    # Their own sessions.
    "ListApps": Rule.SCOPED,
    "CreateApp": Rule.OWN_PROFILE,
    "DescribeApp": Rule.OWN_PROFILE_OR_SHARED_APP,  # and their domain's RStudioServerPro app (read only)
    "DeleteApp": Rule.OWN_PROFILE,
    "DescribeAppProgress": Rule.OWN_PROFILE,
    "GetAppLogs": Rule.OWN_PROFILE,
    # What they may launch on.
    "ListInstanceTypes": Rule.OWN_DOMAIN,
    # Their own browser sign-in.
    "CreatePresignedDomainUrl": Rule.OWN_PROFILE,
    # Who they are.
    "GetCallerIdentity": Rule.ANYONE,
}


def user_rule(operation: str) -> Rule | None:
    """The rule under which a user may call `operation`, or None when users may not call it at all."""
    return USER_RULES.get(operation)


# Operations that change nothing: they are audited only when refused (every change is audited).
READ_PREFIXES = ("Describe", "List", "Get", "Diff")


def is_mutating(operation: str) -> bool:
    return not operation.startswith(READ_PREFIXES)
