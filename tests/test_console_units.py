"""The console's pure parts: API errors in words (`byoi.console.pages.explain`), the Server-Timing header."""

from __future__ import annotations

from byoi.console.pages import explain, server_timing
from byoi.errors import AccessDeniedException, ResourceInUse, ValidationException

NAME_PATTERN = "[a-zA-Z0-9]([-.]?[a-zA-Z0-9]){0,62}"


def test_a_pattern_failure_is_said_in_words_with_the_forms_label():
    err = ValidationException(
        "1 validation error detected: Value 'bad name!' at 'ImageName' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {NAME_PATTERN}"
    )
    assert explain(err) == (
        "The image name 'bad name!' must use letters and digits, with single hyphens or dots between them."
    )
    assert explain(err, {"ImageName": "name"}).startswith("The name 'bad name!' must")


def test_every_problem_of_a_validation_failure_gets_its_sentence():
    err = ValidationException(
        "3 validation errors detected: Value '' at 'DisplayName' failed to satisfy constraint: Member must have "
        "length greater than or equal to 1; Value 'kk' at 'Tags.1.member.Key' failed to satisfy constraint: "
        "Member must have length less than or equal to 1; Value 'x' at 'SortBy' failed to satisfy constraint: "
        "Member must satisfy enum value set: [CREATION_TIME, NAME]"
    )
    assert explain(err) == (
        "The display name must not be empty. The key 'kk' must be at most 1 characters. "
        "The sort by 'x' must be one of: CREATION_TIME, NAME."
    )


def test_an_unknown_pattern_is_quoted_and_other_messages_keep_the_apis_words():
    err = ValidationException(
        "1 validation error detected: Value 'x' at 'Thing' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ^z+$"
    )
    assert explain(err) == "The thing 'x' must match the pattern ^z+$."
    in_use = ResourceInUse("ImageName 'a' is attached to domain d-1")
    assert explain(in_use) == "image name 'a' is attached to domain d-1"
    assert explain(AccessDeniedException("users may not call CreateImage")).startswith("You are not allowed to do this")


def test_server_timing_counts_the_calls():
    class P:
        calls = [("ListImages", 0.002), ("ListImageVersions", 0.001)]

    assert server_timing(P(), 0.01) == 'api;dur=3.0;desc="2 calls", page;dur=10.0'  # type: ignore[arg-type]
