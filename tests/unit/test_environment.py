"""KEY=VALUE environment text: parse, merge, mask, format (pure functions, no database)."""

from __future__ import annotations

import pytest

from container_manager.environment import (
    MASK,
    format_environment,
    is_secret,
    mask_environment,
    merge_environments,
    parse_environment,
)
from container_manager.exceptions import InvalidJobError, SecretUnavailableError


class TestParse:
    def test_simple_lines(self):
        assert parse_environment("KEY1=value1\nKEY2=value2") == {"KEY1": "value1", "KEY2": "value2"}

    @pytest.mark.parametrize("text", [None, "", "\n\n", "   \n\t\n"])
    def test_nothing_to_parse(self, text):
        assert parse_environment(text) == {}

    def test_value_keeps_equals_signs(self):
        env = parse_environment("DATABASE_URL=postgres://u:p@h/db?sslmode=require&x=1\nEMPTY=")
        assert env == {"DATABASE_URL": "postgres://u:p@h/db?sslmode=require&x=1", "EMPTY": ""}

    def test_value_keeps_inner_spaces(self):
        assert parse_environment("GREETING=hello   big world") == {"GREETING": "hello   big world"}

    def test_leading_whitespace_and_name_padding_dropped_value_kept_verbatim(self):
        # Like docker's --env-file: the value is taken as written (trailing spaces too).
        assert parse_environment("   NAME =value  \n\tOTHER=x\r") == {
            "NAME": "value  ",
            "OTHER": "x",
        }

    def test_comments_and_blank_lines_are_ignored(self):
        text = "# settings\n\nA=1\n   # indented comment\n\nB=2\n"
        assert parse_environment(text) == {"A": "1", "B": "2"}

    def test_hash_inside_a_value_is_kept(self):
        assert parse_environment("COLOUR=#ff0000") == {"COLOUR": "#ff0000"}

    def test_windows_line_endings(self):
        assert parse_environment("A=1\r\nB=2\r\n") == {"A": "1", "B": "2"}

    def test_later_duplicate_wins(self):
        assert parse_environment("A=1\nA=2") == {"A": "2"}

    def test_quotes_are_part_of_the_value(self):
        assert parse_environment("Q=\"quoted\"\nS='single'") == {"Q": '"quoted"', "S": "'single'"}

    def test_names_with_underscores_and_digits(self):
        assert parse_environment("_PRIVATE=1\nVAR_2=2\nlower=3") == {
            "_PRIVATE": "1",
            "VAR_2": "2",
            "lower": "3",
        }

    def test_line_without_equals_names_the_line(self):
        with pytest.raises(InvalidJobError, match=r"^environment line 3 is not KEY=VALUE$"):
            parse_environment("A=1\n# comment\nJUST_A_NAME\nB=2")

    @pytest.mark.parametrize(
        ("line", "name"),
        [
            ("1ABC=x", "1ABC"),
            ("MY-VAR=x", "MY-VAR"),
            ("MY VAR=x", "MY VAR"),
            ("=value", ""),
            ("ÄPFEL=x", "ÄPFEL"),
        ],
    )
    def test_invalid_name_names_the_line_and_the_name(self, line, name):
        with pytest.raises(InvalidJobError) as caught:
            parse_environment(f"OK=1\n{line}")
        message = str(caught.value)
        assert message.startswith("environment line 2:")
        assert repr(name) in message
        assert "not a valid variable name" in message


class TestMerge:
    def test_later_layers_win(self):
        template = {"APP_ENV": "prod", "LOG_LEVEL": "info"}
        job = {"LOG_LEVEL": "debug", "EXTRA": "1"}
        assert merge_environments(template, job) == {
            "APP_ENV": "prod",
            "LOG_LEVEL": "debug",
            "EXTRA": "1",
        }

    def test_no_layers(self):
        assert merge_environments() == {}

    def test_inputs_are_not_modified(self):
        template = {"A": "1"}
        job = {"A": "2"}
        merged = merge_environments(template, job)
        merged["B"] = "3"
        assert template == {"A": "1"}
        assert job == {"A": "2"}

    def test_three_layers(self):
        assert merge_environments({"A": "1"}, {"A": "2", "B": "2"}, {"B": "3"}) == {
            "A": "2",
            "B": "3",
        }


class TestMask:
    @pytest.mark.parametrize(
        "name",
        [
            "PASSWORD",
            "DB_PASSWORD",
            "db_password",
            "SECRET_KEY",
            "API_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "SSH_KEY",
            "CREDENTIALS_FILE",
            "MYSQL_PASSWD",
            "GithubToken",
        ],
    )
    def test_secret_looking_names(self, name):
        assert is_secret(name)
        assert mask_environment({name: "hunter2"}) == {name: MASK}

    @pytest.mark.parametrize("name", ["PATH", "APP_ENV", "LOG_LEVEL", "HOME", "USER"])
    def test_ordinary_names(self, name):
        assert not is_secret(name)
        assert mask_environment({name: "visible"}) == {name: "visible"}

    def test_mask_returns_a_copy(self):
        env = {"API_TOKEN": "abc", "APP_ENV": "prod"}
        masked = mask_environment(env)
        assert masked == {"API_TOKEN": MASK, "APP_ENV": "prod"}
        assert env == {"API_TOKEN": "abc", "APP_ENV": "prod"}

    def test_mask_does_not_reveal_value_length(self):
        assert (
            mask_environment({"A_TOKEN": "x"})["A_TOKEN"]
            == mask_environment({"A_TOKEN": "x" * 100})["A_TOKEN"]
        )


class TestFormat:
    def test_format(self):
        assert format_environment({"A": "1", "B": "x=y z"}) == "A=1\nB=x=y z"

    def test_empty(self):
        assert format_environment({}) == ""

    @pytest.mark.parametrize(
        "env",
        [
            {"A": "1"},
            {"URL": "http://h/?a=b&c=d", "EMPTY": "", "SPACES": "a b  c", "HASH": "#x"},
        ],
    )
    def test_round_trip(self, env):
        assert parse_environment(format_environment(env)) == env

    def test_value_with_newline_is_rejected_not_injected(self):
        with pytest.raises(InvalidJobError, match="A"):
            format_environment({"A": "x\nINJECTED=1"})

    def test_round_trip_keeps_trailing_whitespace(self):
        assert parse_environment(format_environment({"PAD": "x  "})) == {"PAD": "x  "}


class TestSecretReferences:
    """Secret references: checked at submission, resolved by the worker at launch; a message
    names the reference, never a value."""

    def test_forms(self):
        from container_manager.environment import parse_secret_environment

        assert parse_secret_environment({"TOKEN": "env:API_TOKEN", "KEY": "file:/run/k"}) == {
            "TOKEN": "env:API_TOKEN",
            "KEY": "file:/run/k",
        }
        assert parse_secret_environment(None) == {}

    @pytest.mark.parametrize(
        "value",
        [
            {"TOKEN": "hunter2"},
            {"TOKEN": "env:"},
            {"TOKEN": "env:1BAD"},
            {"TOKEN": "file:relative"},
            {"1BAD": "env:X"},
            {"TOKEN": 5},
            ["env:X"],
        ],
    )
    def test_refusals_never_echo_the_value(self, value):
        from container_manager.environment import parse_secret_environment

        with pytest.raises(InvalidJobError) as caught:
            parse_secret_environment(value)
        assert "hunter2" not in str(caught.value)

    def test_env_reference(self, monkeypatch):
        from container_manager.environment import resolve_reference

        monkeypatch.setenv("CM_TEST_SECRET", "v@lue with spaces")
        assert resolve_reference("env:CM_TEST_SECRET") == "v@lue with spaces"
        monkeypatch.delenv("CM_TEST_SECRET")
        with pytest.raises(SecretUnavailableError, match="env:CM_TEST_SECRET"):
            resolve_reference("env:CM_TEST_SECRET")

    def test_file_reference(self, tmp_path):
        from container_manager.environment import resolve_reference

        secret = tmp_path / "secret"
        secret.write_text("from-a-file\n")
        assert resolve_reference(f"file:{secret}") == "from-a-file"
        with pytest.raises(SecretUnavailableError, match="cannot read it") as caught:
            resolve_reference(f"file:{tmp_path}/missing")
        assert "from-a-file" not in str(caught.value)
        (tmp_path / "big").write_bytes(b"x" * (1024 * 1024 + 1))
        with pytest.raises(SecretUnavailableError, match="larger than 1 MiB"):
            resolve_reference(f"file:{tmp_path}/big")
        (tmp_path / "bin").write_bytes(b"\xff\xfe")
        with pytest.raises(SecretUnavailableError, match="not UTF-8"):
            resolve_reference(f"file:{tmp_path}/bin")
