"""``startup.connector_from_environment``: the one way both no-code modes build their connector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ossmodelconnector import ConfigError
from ossmodelconnector.cli import main
from ossmodelconnector.startup import connector_from_environment


@pytest.fixture
def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"AccessKeyId": "file-id", "AccessKeySecret": "file-secret"}))
    return path


@pytest.fixture(autouse=True)
def _no_credentials_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for prefix in ("OSSMC_", "OSSMODELCONNECTOR_"):
        for kind in ("CRED_PATH", "CONFIG_PATH"):
            monkeypatch.delenv(prefix + kind, raising=False)


def test_arguments_win_and_each_falls_back_to_its_variable(
    monkeypatch: pytest.MonkeyPatch, credentials_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"chunkSizeMB": 4}))
    monkeypatch.setenv("OSS_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OSSMC_CRED_PATH", str(credentials_file))
    monkeypatch.setenv("OSSMC_CONFIG_PATH", str(config))
    with connector_from_environment() as connector:
        assert str(connector.endpoint) == "http://127.0.0.1:9"
        assert connector.config.chunk_size_mb == 4
    with connector_from_environment("http://127.0.0.1:10", config_path="") as connector:
        assert str(connector.endpoint) == "http://127.0.0.1:10"


def test_the_older_variable_names_are_still_read(
    monkeypatch: pytest.MonkeyPatch, credentials_file: Path
) -> None:
    monkeypatch.setenv("OSSMODELCONNECTOR_CRED_PATH", str(credentials_file))
    with connector_from_environment("http://127.0.0.1:9") as connector:
        assert connector.stats()["requests"] == 0  # built: the credentials file was found and read


def test_no_endpoint_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="--endpoint or set OSS_ENDPOINT"):
        connector_from_environment()


def test_the_run_command_without_an_endpoint_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "oss://bucket/model/", "/tmp/never-created", "--", "true"]) == 2
    assert "OSS_ENDPOINT" in capsys.readouterr().err
    assert not Path("/tmp/never-created").exists()
