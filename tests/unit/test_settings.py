"""Settings: sources, priorities and errors that name the bad setting."""

from pathlib import Path

import pytest

from opsloop.errors import ConfigError
from opsloop.settings import load_settings


def test_defaults_put_all_state_under_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert settings.db_url == f"sqlite:///{tmp_path / 'opsloop.db'}"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.artifact_root == (tmp_path / "mlartifacts").as_uri()
    assert settings.admin_key_path == tmp_path / "admin.key"


def test_flags_beat_environment_beat_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "opsloop.yaml"
    config.write_text("port: 9001\nworkers: 3\nlog_level: debug\n")
    monkeypatch.setenv("OPSLOOP_PORT", "9002")
    settings = load_settings(config, workers=5)
    assert (settings.port, settings.workers, settings.log_level) == (9002, 5, "debug")


def test_config_file_can_come_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "opsloop.yaml"
    config.write_text(f"home: {tmp_path / 'state'}\n")
    monkeypatch.setenv("OPSLOOP_CONFIG", str(config))
    assert load_settings().home == tmp_path / "state"


def test_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings().home == tmp_path / ".opsloop"


def test_bad_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLOOP_PORT", "eighty")
    with pytest.raises(ConfigError, match="OPSLOOP_PORT") as caught:
        load_settings()
    assert caught.value.details["settings"] == ["port"]
    assert "eighty" in caught.value.message


def test_unknown_key_in_yaml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "opsloop.yaml"
    config.write_text("prot: 8000\n")
    with pytest.raises(ConfigError, match="OPSLOOP_PROT"):
        load_settings(config)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_env_round_trips_into_worker_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings(home=tmp_path, port=9100, max_body_bytes=4096)
    for name, value in original.env().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == original


def test_qdrant_store_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLOOP_VECTOR_STORE", "qdrant")
    with pytest.raises(ConfigError, match="OPSLOOP_QDRANT_URL") as caught:
        load_settings()
    assert caught.value.details["settings"] == ["qdrant_url"]
    monkeypatch.setenv("OPSLOOP_QDRANT_URL", "http://qdrant:6333")
    assert load_settings().qdrant_url == "http://qdrant:6333"


def test_qdrant_api_key_is_secret_but_reaches_workers(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path, vector_store="qdrant", qdrant_url="http://q:6333", qdrant_api_key="s3"
    )
    assert "s3" not in repr(settings)
    assert settings.env()["OPSLOOP_QDRANT_API_KEY"] == "s3"


def test_rag_defaults_and_bounds(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert (settings.vector_store, settings.rag_top_k, settings.rag_score_threshold) == ("edge", 5, 0.3)
    assert (settings.rag_context_tokens, settings.rag_max_answer_tokens, settings.llm_model_path) == (
        1500,
        256,
        None,
    )
    with pytest.raises(ConfigError, match="OPSLOOP_RAG_TOP_K"):
        load_settings(home=tmp_path, rag_top_k=0)
