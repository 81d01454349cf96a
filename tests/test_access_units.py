"""The authorization table as data (byoi.auth.policy): every rule names a real operation, users get nothing that
changes the catalog or the identities, and what is audited as a change is exactly the operations that change."""

from __future__ import annotations

import regex

from byoi.api.model import all_operation_names, extension_model, sagemaker_model
from byoi.auth import policy
from byoi.auth.policy import USER_RULES, Rule, is_mutating, user_rule

READ_VERBS = {"Describe", "List", "Get", "Diff"}


def verb(operation: str) -> str:
    match = regex.match(r"[A-Z][a-z]+", operation)
    assert match, operation
    return match.group(0)


def test_every_rule_names_a_real_operation():
    unknown = set(USER_RULES) - all_operation_names()
    assert not unknown, f"USER_RULES names operations no model defines: {sorted(unknown)}"
    assert all(isinstance(rule, Rule) for rule in USER_RULES.values())


def test_operations_with_a_resource_rule_take_the_members_the_rule_reads():
    for operation, rule in USER_RULES.items():
        model = sagemaker_model() if operation in sagemaker_model().operation_names else extension_model()
        members = set(model.operation_model(operation).input_shape.members)
        needed = {
            Rule.OWN_PROFILE: {"DomainId", "UserProfileName"},
            Rule.OWN_PROFILE_OR_SHARED_APP: {"DomainId", "UserProfileName", "AppType", "AppName"},
            Rule.OWN_DOMAIN: {"DomainId"},
            Rule.ATTACHED_IMAGE: {"ImageName"},
        }.get(rule, set())
        assert needed <= members, (operation, rule, needed - members)
        if rule is Rule.SCOPED:
            assert operation.startswith("List"), operation


def test_users_may_change_only_their_own_apps():
    changes = {op for op in USER_RULES if is_mutating(op)}
    assert changes == {"CreateApp", "DeleteApp", "CreatePresignedDomainUrl"}
    assert all(USER_RULES[op] is Rule.OWN_PROFILE for op in changes)


def test_admin_only_operations_have_no_rule():
    for operation in ("CreateImage", "DeleteImage", "UpdateDomain", "UpdateAttachedImages", "CreatePrincipal"):
        assert user_rule(operation) is None
        assert operation in all_operation_names()


def test_is_mutating_on_known_operations():
    for operation in ("CreateApp", "DeleteApp", "UpdateAttachedImages", "StopImageBuild", "SetPrincipalPassword"):
        assert is_mutating(operation)
    for operation in ("DescribeImage", "ListAuditEvents", "GetAppLogs", "DiffImageVersions", "GetCallerIdentity"):
        assert not is_mutating(operation)
    assert set(policy.READ_PREFIXES) == READ_VERBS


def test_no_read_verb_hides_a_change():
    """A read prefix must be a whole verb: `Diff` must not swallow a `Different...` change, nor `Get` a
    `Getaway`; every operation whose verb is not a read verb is audited."""
    for operation in all_operation_names():
        assert is_mutating(operation) == (verb(operation) not in READ_VERBS), operation
    assert {verb(op) for op in all_operation_names() if is_mutating(op)} >= {"Create", "Update", "Delete"}
