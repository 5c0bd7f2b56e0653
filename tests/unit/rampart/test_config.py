"""Config loading: every kind of mistake stops with one line naming the key, the source and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from rampart.config import ConfigError, RampartConfig, load_config
from rampart.settings import Secret, env_secret, load, redacted

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "rampart.example.yaml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rampart.yaml"
    path.write_text(text)
    return str(path)


def test_example_config_loads_with_defaults() -> None:
    config = load_config(str(EXAMPLE), env={})
    defaults = RampartConfig()
    assert config.kafka == defaults.kafka
    assert config.topics == defaults.topics
    assert config.keyring.file is not None and config.keyring.file.endswith("secrets/keyring.yaml")
    assert Path(config.keyring.file).is_absolute()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env={})
    assert config.topics.partitions == 6 and config.kafka.bootstrap_servers == "127.0.0.1:9092"


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap_server: x:9092\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"config error: kafka.bootstrap_server in {path}: unknown key")
    assert "bootstrap_servers" in message  # the known keys point at the typo
    assert "\n" not in message


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config error: kafak in .*: unknown key"):
        load_config(write(tmp_path, "kafak: {}\n"), env={})


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("topics:\n  partitions: six\n", "topics.partitions", "expected an integer, got str 'six'"),
    ("topics:\n  partitions: 2.5\n", "topics.partitions", "expected an integer, got float 2.5"),
    ("topics:\n  partitions: true\n", "topics.partitions", "expected an integer, got bool True"),
    ("kafka:\n  bootstrap_servers: 9092\n", "kafka.bootstrap_servers", "expected a string, got int 9092"),
    ("kafka: [a, b]\n", "kafka", "expected a mapping, got a list"),
    ("topics:\n  dlq_sinks: otlp\n", "topics.dlq_sinks", "expected a list, got str 'otlp'"),
    ("logging:\n  format: xml\n", "logging.format", "expected one of json, text; got 'xml'"),
])
def test_wrong_type(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"config error: {key} in {path}: {expected}"


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("topics:\n  partitions: 0\n", "topics.partitions", "expected an integer >= 1 and <= 10000, got 0"),
    ("kafka:\n  max_message_bytes: 100\n", "kafka.max_message_bytes", "got 100"),
    ("redis:\n  socket_timeout_s: -1\n", "redis.socket_timeout_s", "expected a number >= 0.01"),
])
def test_out_of_range(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^config error: {key} in {path}: .*{expected}"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=rf"^config error: <top level> in {path}: file not found"):
        load_config(path, env={})


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(write(tmp_path, "kafka:\n  a: [unclosed\n"), env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got a list"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "topics:\n  partitions: 3\n")
    env = {"RAMPART__TOPICS__PARTITIONS": "12", "RAMPART__KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
           "RAMPART__TOPICS__DLQ_SINKS": "otlp, jaeger", "UNRELATED": "x"}
    config = load_config(path, env=env)
    assert config.topics.partitions == 12
    assert config.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert config.topics.dlq_sinks == ("otlp", "jaeger")


def test_environment_mistakes_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"RAMPART__TOPICS__PARTITIONS": "many"})
    assert str(info.value) == ("config error: topics.partitions in environment variable "
                               "RAMPART__TOPICS__PARTITIONS: expected an integer, got 'many'")
    with pytest.raises(ConfigError, match="RAMPART__TOPICZ__PARTITIONS: unknown key"):
        load_config(path, env={"RAMPART__TOPICZ__PARTITIONS": "1"})


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), ("no", False), ("True", True)])
def test_boolean_strings_mean_what_they_say(raw: str, expected: bool, tmp_path: Path) -> None:
    # Exercise the parser through a small dataclass with a bool field.
    @dataclass(frozen=True)
    class Flags:
        enabled: bool = True

    assert load(Flags, {}, "f.yaml", {"RAMPART__ENABLED": raw}).enabled is expected
    with pytest.raises(ConfigError, match="expected true or false, got 'maybe'"):
        load(Flags, {}, "f.yaml", {"RAMPART__ENABLED": "maybe"})


def test_secrets_are_hidden(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  sasl_password: hunter2\nredis:\n  password: swordfish\n")
    config = load_config(path, env={})
    assert isinstance(config.kafka.sasl_password, Secret)
    assert config.kafka.sasl_password.reveal() == "hunter2"
    shown = repr(config) + str(redacted(config))
    assert "hunter2" not in shown and "swordfish" not in shown


def test_secret_from_a_file_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "kafka-password").write_text("s3cret\n")  # the newline editors add is not part of it
    config = load_config(write(tmp_path, "redis:\n  password_file: kafka-password\n"), env={})
    assert config.redis.password == Secret("s3cret")
    assert redacted(config)["redis"]["password"] == "********"


def test_secret_from_a_file_named_by_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "mounted"
    secret.write_text("from-a-mount")
    env = {"RAMPART__KAFKA__SASL_PASSWORD_FILE": str(secret)}
    sasl = "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n  sasl_username: u\n"
    assert load_config(write(tmp_path, sasl), env=env).kafka.sasl_password == Secret("from-a-mount")
    # As with every key, the environment overrides the file.
    overridden = load_config(write(tmp_path, sasl + "  sasl_password: in-the-file\n"), env=env)
    assert overridden.kafka.sasl_password == Secret("from-a-mount")


def test_secret_given_twice_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mounted"
    secret.write_text("x")
    with pytest.raises(ConfigError, match="set either sasl_password or sasl_password_file"):
        load_config(write(tmp_path, f"kafka:\n  sasl_password: y\n  sasl_password_file: {secret}\n"), env={})


def test_missing_secret_file_names_key_variable_and_path(tmp_path: Path) -> None:
    env = {"RAMPART__REDIS__PASSWORD_FILE": "/run/secrets/nope"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""), env=env)
    message = str(info.value)
    assert "redis.password_file" in message and "RAMPART__REDIS__PASSWORD_FILE" in message
    assert "/run/secrets/nope" in message


def test_file_form_only_for_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.sasl_username_file.*unknown key"):
        load_config(write(tmp_path, "kafka:\n  sasl_username_file: /etc/hostname\n"), env={})


def test_env_secret_reads_variable_or_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("abc\n")
    assert env_secret({"K": "direct", "K_FILE": str(secret)}, "K") == "direct"
    assert env_secret({"K_FILE": str(secret)}, "K") == "abc"
    assert env_secret({}, "K") is None
    with pytest.raises(ConfigError, match=r"K_FILE.*cannot read secret file"):
        env_secret({"K_FILE": str(tmp_path / "missing")}, "K")


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("security_protocol: SASL_SSL", "kafka.sasl_mechanism", "needs a mechanism"),
    ("sasl_mechanism: PLAIN", "kafka.sasl_mechanism", "use SASL_SSL"),
    ("security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-256\n  sasl_password: p", "kafka.sasl_username",
     "required by sasl_mechanism SCRAM-SHA-256"),
    ("security_protocol: SASL_SSL\n  sasl_mechanism: OAUTHBEARER\n  sasl_oauthbearer_client_id: c",
     "kafka.sasl_oauthbearer_token_endpoint_url", "required by sasl_mechanism OAUTHBEARER"),
    ("security_protocol: SSL\n  ssl_certificate_location: c.pem", "kafka.ssl_key_location", "needs both"),
    ("ssl_certificate_location: c.pem\n  ssl_key_location: k.pem", "kafka.ssl_certificate_location",
     "use SSL or SASL_SSL"),
])
def test_kafka_security_settings_that_do_not_fit_together(tmp_path: Path, text: str, key: str,
                                                          expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"kafka:\n  {text}\n"), env={})
    assert info.value.key == key and expected in info.value.problem
