"""``fn``'s own parts: a deploy file under the flags, its unknown keys,
the limits' help derived from the spec, and what a follow prints at the end."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgeloader.cli import build_parser
from edgeloader.cli.commands.deploy_file import deployment
from edgeloader.cli.commands.functions import _rest
from edgeloader.cli.output import UsageError
from edgeloader.cli.run_follow import Printed
from edgeloader.functions.spec import FunctionOptions, Limits

GREET = """\
name: greet
context: greet
command: sh /greet.sh
env:
  GREETING: Hello
limits:
  memoryMb: 64
  timeoutS: 10
models:
  - models/m.bin
warm:
  max: 1
  idleS: 30
"""


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["fn", "deploy", *argv])


def test_a_yaml_deploy_file_gives_every_field(tmp_path: Path) -> None:
    (tmp_path / "greet.yml").write_text(GREET)
    wanted = deployment(parse("-f", str(tmp_path / "greet.yml")))
    assert (wanted.name, wanted.image, wanted.context) == ("greet", None, tmp_path / "greet")
    assert wanted.spec == {
        "command": ["sh", "/greet.sh"],
        "env": {"GREETING": "Hello"},
        "limits": {"memoryMb": 64, "timeoutS": 10},
        "models": [{"folder": "models", "name": "m.bin"}],
        "warm": {"max": 1, "idleS": 30},
    }


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "greet.yml").write_text(GREET)
    wanted = deployment(
        parse(
            "other", "-f", str(tmp_path / "greet.yml"), "--image", "img:2",
            "--timeout", "20", "--env", "GREETING=Hi", "--warm", "2",
        )
    )  # fmt: skip
    assert (wanted.name, wanted.image, wanted.context) == ("other", "img:2", None)
    assert wanted.spec["limits"] == {"memoryMb": 64, "timeoutS": 20}
    assert wanted.spec["env"] == {"GREETING": "Hi"}
    assert wanted.spec["warm"] == {"max": 2}


def test_a_json_deploy_file(tmp_path: Path) -> None:
    path = tmp_path / "echo.json"
    path.write_text('{"name": "echo", "image": "localhost/echo:1", "queue": 2}')
    wanted = deployment(parse("--file", str(path)))
    assert (wanted.name, wanted.image, wanted.spec) == ("echo", "localhost/echo:1", {"queue": 2})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: a\nimage: i\nmemoryMb: 64\n", "'memoryMb'"),
        ("name: a\nimage: i\nlimits:\n  memory: 64\n", "limits.'memory'"),
        ("name: a\nimage: i\nwarm:\n  idle: 5\n", "warm.'idle'"),
        ("name: a\nimage: i\nmodels:\n  - {folder: m, file: x}\n", "models[0].'file'"),
    ],
)
def test_an_unknown_key_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "fn.yml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        deployment(parse("-f", str(path)))
    assert caught.value.detail == f"{path}: unknown key {key}"


def test_a_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "fn.yml"
    path.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        deployment(parse("-f", str(path)))
    path.write_text("name: [unclosed\n")
    with pytest.raises(UsageError, match="not YAML"):
        deployment(parse("-f", str(path)))
    with pytest.raises(UsageError, match="NAME is missing"):
        deployment(parse("--image", "img:1"))
    with pytest.raises(UsageError, match="--image or --context"):
        deployment(parse("greet"))


def test_deploy_help_states_each_limit_from_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fn", "deploy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field, info in Limits.model_fields.items():
        low = next(m.ge for m in info.metadata if hasattr(m, "ge"))
        assert f"{low:g}" in text, field
        high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        span = (
            f"{low:g}-{high:g}; default {info.default:g}" if high else f"default {info.default:g}"
        )
        assert span in text, field
    for field in ("concurrency", "queue", "user"):
        info = FunctionOptions.model_fields[field]
        assert f"default {info.default:g}" in text, field


def test_what_a_follow_prints_at_the_end() -> None:
    kept = {"stdout": "one\ntwo\nthree\n", "stderr": "e\n"}
    assert _rest(kept, Printed(["one\n", "two\n"], [])) == ("three\n", "e\n", True)
    assert _rest(kept, Printed([], [])) == ("one\ntwo\nthree\n", "e\n", True)
    # Joined late: the live part is not the start; the rest is not guessed.
    assert _rest(kept, Printed(["three\n"], [])) == ("", "e\n", False)
