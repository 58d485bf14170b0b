"""No password or token in any line the agent writes (agent.redact), and none in a configuration error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.redact import SecretFilter, install_log_redaction, redact, redact_url


def test_redact_blanks_url_userinfo_bearer_tokens_and_given_secrets() -> None:
    assert redact_url("http://shelf:pa55word@hub.example:8080/v1/sync") == "http://***@hub.example:8080/v1/sync"
    assert redact_url("https://hub.example/v1") == "https://hub.example/v1"
    text = "GET http://u:p@h/x with Authorization: Bearer abc.DEF-123 and token sekrit-token-42 twice sekrit-token-42"
    assert redact(text, ["sekrit-token-42"]) == "GET http://***@h/x with Authorization: Bearer *** and token *** twice ***"
    assert redact("a tiny secret abc", ["abc"]) == "a tiny secret abc"  # too short to be a secret: words survive


def test_the_filter_cleans_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("agent.test_redact")
    secret_filter = SecretFilter(["the-agent-token-xyz"])
    caplog.handler.addFilter(secret_filter)
    try:
        with caplog.at_level(logging.INFO, logger="agent.test_redact"):
            log.info("Agent started with hub %s.", "http://shelf:pa55word@127.0.0.1:8470")
            try:
                raise RuntimeError("connect failed to http://shelf:pa55word@hub with token the-agent-token-xyz")
            except RuntimeError:
                log.exception("Sync failed")
    finally:
        caplog.handler.removeFilter(secret_filter)
    assert "pa55word" not in caplog.text and "the-agent-token-xyz" not in caplog.text
    assert "http://***@127.0.0.1:8470" in caplog.text and "RuntimeError" in caplog.text


def test_install_adds_secrets_to_the_one_filter_on_every_root_handler() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        first = install_log_redaction(["token-one-111"])
        again = install_log_redaction(["token-two-222"])
        assert first is again and set(again.secrets) >= {"token-one-111", "token-two-222"}
        assert first in handler.filters
    finally:
        root.removeHandler(handler)
        for h in root.handlers:
            for f in [f for f in h.filters if isinstance(f, SecretFilter)]:
                h.removeFilter(f)


def test_a_password_in_hub_url_is_refused_and_not_repeated(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nid = "a"\nlocation = "S1"\ntoken = "tok-123456"\nhub_url = "http://shelf:pa55word@hub:8470"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "must not carry a user name or password" in str(err.value) and "pa55word" not in str(err.value)
    config.write_text('[agent]\nid = "a"\nlocation = "S1"\ntoken = "tok-123456"\nhub_url = "ftp://shelf:pa55word@hub"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "pa55word" not in str(err.value)
