"""The rampart command: help everywhere, honest stubs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rampart.cli import main

COMMANDS = [[], ["config"], ["config", "check"], ["topics"], ["topics", "create"], ["topics", "list"], ["keys"],
            ["keys", "generate"], ["keys", "list"], ["gateway"], ["apikeys"], ["apikeys", "create"],
            ["apikeys", "list"], ["apikeys", "revoke"], ["worker"], ["sink"], ["dlq"], ["dlq", "replay"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "rampart")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"], env={})
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rampart") and len(out.splitlines()) > 3


def test_sink_needs_a_known_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sink", "kafka"], env={})
    assert info.value.code == 2 and "invalid choice: 'kafka'" in capsys.readouterr().err


def test_config_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("topics:\n  partitions: -3\n")
    assert main(["--config", str(path), "config", "check"], env={}) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"config error: topics.partitions in {path}: expected an integer >= 1 and <= 10000, got -3"


def test_config_path_from_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  sasl_password: s3cret\n")
    assert main(["config", "check"], env={"RAMPART_CONFIG": str(path)}) == 0
    out = capsys.readouterr().out
    assert f"config OK: {path}" in out and "s3cret" not in out and "********" in out


def test_keys_generate_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "keys.yaml"
    config = tmp_path / "c.yaml"
    config.write_text(f"keyring:\n  file: {keyfile}\n")
    assert main(["--config", str(config), "keys", "generate", "--id", "gw-1"], env={}) == 0
    assert main(["--config", str(config), "keys", "generate", "--id", "gw-2", "--signing"], env={}) == 0
    assert main(["--config", str(config), "keys", "generate", "--id", "gw-2"], env={}) == 1
    capsys.readouterr()
    assert main(["--config", str(config), "keys", "list"], env={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["gw-1", "verify"], ["gw-2", "signing"]]
    secret_lines = [line for line in keyfile.read_text().splitlines() if line.startswith("  gw-")]
    assert not any(line.split(": ")[1] in "\n".join(lines) for line in secret_lines)


def test_keys_generate_without_a_file_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("keyring:\n  file: null\n")
    assert main(["--config", str(config), "keys", "generate", "--id", "x"], env={}) == 2
    assert "pass --file PATH or set keyring.file" in capsys.readouterr().err


def test_gateway_without_keys_stops_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"keyring:\n  file: {tmp_path / 'absent.yaml'}\n")
    assert main(["--config", str(config), "gateway"], env={}) == 2
    err = capsys.readouterr().err
    assert f"key file {tmp_path / 'absent.yaml'} not found (create one with `rampart keys generate`)" in err


def test_gateway_with_unreadable_tls_files_stops_with_a_clear_error(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "keys.yaml"
    config = tmp_path / "c.yaml"
    config.write_text(f"keyring:\n  file: {keyfile}\ngateway:\n  tls:\n    cert_file: nope.pem\n"
                      "    key_file: nope-key.pem\n")
    assert main(["--config", str(config), "keys", "generate", "--id", "gw"], env={}) == 0
    assert main(["--config", str(config), "gateway"], env={}) == 2
    assert "No such file" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["gateway"], ["worker", "--stages", "validate"], ["sink", "otlp"]])
def test_every_role_refuses_incomplete_kafka_security(command: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n"
                      "  sasl_username: rampart\n")
    assert main(["--config", str(config), *command], env={}) == 2
    err = capsys.readouterr().err
    assert "kafka.sasl_password" in err and "required by sasl_mechanism SCRAM-SHA-512" in err
