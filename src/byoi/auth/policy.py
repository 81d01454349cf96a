"""Which role may call which operation: the one table, checked in one place (the API door).

Administrators may call everything. The `user` role (people bound to a user profile, coming with the
access-control work) is given only what a data scientist needs; until then no key has that role.
"""

from __future__ import annotations

USER_OPERATIONS = frozenset(
    {
        "DescribeImage",
        "ListImages",
        "DescribeImageVersion",
        "ListImageVersions",
        "ListAliases",
        "ListTags",
    }
)


def is_allowed(role: str, operation: str) -> bool:
    if role == "admin":
        return True
    if role == "user":
        return operation in USER_OPERATIONS
    return False
