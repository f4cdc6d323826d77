"""The KFP backend releases ``bevt pipeline submit`` requires: which reported versions pass, and what the
refusal names."""

from __future__ import annotations

import pytest

from bevt_core.config import ConfigError
from pipelines import backend


@pytest.mark.parametrize("tag", ["2.15.0", "v2.15.0", "2.16.1", "3.0.0", "master", ""])
def test_releases_from_the_minimum_on_and_builds_without_a_release_pass(tag):
    backend.check(tag, "https://kfp")


def test_a_release_older_than_one_requirement_is_refused_naming_that_feature():
    with pytest.raises(ConfigError) as refused:
        backend.check("2.14.4", "https://kfp")
    message = str(refused.value)
    assert message.startswith(
        "host: the Kubeflow Pipelines backend at https://kfp is 2.14.4; this pipeline needs 2.15.0"
    )
    assert "2.15.0: the optional bevt-env ConfigMap" in message
    assert [line for line in message.splitlines() if line.startswith("  ")] == [
        "  2.15.0: " + backend.REQUIREMENTS[-1].feature
    ]


def test_an_old_release_is_refused_for_every_feature_it_lacks():
    with pytest.raises(ConfigError) as refused:
        backend.check("2.2.0", "https://kfp")
    assert [line.split(":")[0].strip() for line in str(refused.value).splitlines() if line.startswith("  ")] == [
        "2.3.0",
        "2.4.0",
        "2.14.0",
        "2.15.0",
    ]


def test_the_version_comes_from_the_api_server_or_the_ui_answer():
    assert backend.reported_version({"tag_name": "2.15.0", "commit_sha": "abc"}) == "2.15.0"
    assert backend.reported_version({"apiServerTagName": "2.5.0", "frontendTagName": "2.5.0"}) == "2.5.0"
    assert backend.reported_version({"tag_name": "unknown"}) == ""
    assert backend.reported_version({"multi_user": True}) == ""
