"""Tags never outlive their resource, including resources removed by a cascade (apps with their domain)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.conftest import ROLE
from tests.support.attach import new_domain, unique

RSTUDIO = {"RStudioServerProDomainSettings": {"DomainExecutionRoleArn": ROLE}}


def tag_rows(server, prefix: str) -> list[str]:
    with sqlite3.connect(server.data_dir / "byoi.db") as db:
        return [r[0] for r in db.execute("SELECT resource_arn FROM tags WHERE resource_arn LIKE ?", (prefix + "%",))]


def test_app_tags_go_with_the_domain(server, sm):
    domain = new_domain(sm, unique("tags"), DomainSettings=RSTUDIO, Tags=[{"Key": "team", "Value": "r"}])
    # The domain's RStudioServerPro app is made with it; tag it.
    app_arn = sm.describe_app(
        DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default"
    )["AppArn"]
    sm.add_tags(ResourceArn=app_arn, Tags=[{"Key": "cost", "Value": "7"}])
    assert sm.list_tags(ResourceArn=app_arn)["Tags"] == [{"Key": "cost", "Value": "7"}]
    sm.delete_app(DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default")
    for _ in range(100):
        app = sm.describe_app(
            DomainId=domain, UserProfileName="domain-shared", AppType="RStudioServerPro", AppName="default"
        )
        if app["Status"] == "Deleted":
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the app is still {app['Status']} 20 s after DeleteApp")
    assert tag_rows(server, app_arn) == [app_arn]  # a Deleted app is still describable, and keeps its tags

    sm.delete_domain(DomainId=domain)
    for _ in range(100):
        listed = [d for d in sm.list_domains(MaxResults=100)["Domains"] if d["DomainId"] == domain]
        if not listed:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the domain is still listed 20 s after DeleteDomain: {listed}")
    domain_arn = app_arn.split(":app/")[0] + f":domain/{domain}"
    assert tag_rows(server, domain_arn) == []
    assert tag_rows(server, app_arn.rsplit("/", 3)[0]) == []
