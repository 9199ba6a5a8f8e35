"""``environment``: one prefix for our variables, the older spelling still read, the new one winning."""

from __future__ import annotations

import logging

import pytest

from ossmodelconnector.config import load_config
from ossmodelconnector.environment import (
    CONFIG_PATH_ENV,
    CRED_PATH_ENV,
    ENV_PREFIX,
    LEGACY_ENV_PREFIX,
    NOT_SETTINGS,
    PREPARED_DIRS_ENV,
    PUREPYTHON_ENV,
    environment_value,
)


def test_every_variable_of_ours_has_the_one_prefix() -> None:
    assert all(name.startswith(ENV_PREFIX) for name in NOT_SETTINGS)
    assert {CONFIG_PATH_ENV, CRED_PATH_ENV, PREPARED_DIRS_ENV, PUREPYTHON_ENV} == NOT_SETTINGS


@pytest.mark.parametrize("name", sorted(NOT_SETTINGS))
def test_the_older_spelling_is_an_alias_and_the_new_one_wins(name: str) -> None:
    legacy = LEGACY_ENV_PREFIX + name.removeprefix(ENV_PREFIX)
    assert environment_value(name, {}) == ""
    assert environment_value(name, {legacy: "/old"}) == "/old"
    assert environment_value(name, {name: "/new", legacy: "/old"}) == "/new"
    assert environment_value(name, {name: "", legacy: "/old"}) == "/old"  # empty is unset, as in shells


def test_variables_that_are_not_settings_are_not_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "/somewhere")
    monkeypatch.setenv("OSSMC_CHUNK_SIZ_MB", "4")  # a typo of a setting is
    with caplog.at_level(logging.WARNING, logger="ossmodelconnector.config"):
        load_config()
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1 and "OSSMC_CHUNK_SIZ_MB" in warned[0] and "OSSMC_CHUNK_SIZE_MB" in warned[0]
