"""Every command and subcommand of `promptus` answers --help, and its defaults come from the code's constants."""

from __future__ import annotations

import click
from click.testing import CliRunner

from promptus_codec.cli import main


def walk(group: click.Group, path: tuple[str, ...] = ()):
    """(argv path, command) for every command under ``group``, depth first."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


def test_every_command_and_subcommand_has_help():
    runner = CliRunner()
    seen = []
    for path, command in walk(main):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert (
            f"Usage: main {' '.join(path)}" in result.output or f"Usage: promptus {' '.join(path)}" in result.output
        ), path
        summary = (command.help or "").split("\n")[0].strip()
        assert summary and " ".join(summary.split()[:4]) in " ".join(result.output.split()), path
        seen.append(" ".join(path))
    # the tree as it is: a command added or lost shows up here
    assert {
        "engine export",
        "engine build",
        "encode",
        "decode",
        "inspect",
        "validate",
        "compare",
        "eval",
        "import-legacy",
    } <= set(seen), seen


def test_encode_help_shows_defaults_from_the_options_dataclass():
    """Defaults are read from EncodeOptions / FitConfig, never copied into the option list."""
    from promptus_codec.encoder.options import EncodeOptions, FitConfig

    text = " ".join(CliRunner().invoke(main, ["encode", "--help"]).output.split())
    assert (
        "--min-rank INTEGER Rate control keeps at least this rank while shortening K. Default: the model's own" in text
    )
    assert f"[default: {EncodeOptions.preset}]" in text
    assert f"(default {FitConfig.alpha})" in text
    assert f"[default: {EncodeOptions.refresh_s}]" in text
    assert f"[default: {EncodeOptions.latent_format.name.lower()}]" in text


def test_bad_values_get_one_usage_line():
    runner = CliRunner()
    for args, message in (
        (["encode", "x.mp4", "-o", "o.prx", "--bitrate", "fast"], "'fast' is not a bitrate like 225k"),
        (["encode", "x.mp4", "-o", "o.prx", "--size", "512"], "'512' is not a size like 512x512"),
        (["encode", "x.mp4", "-o", "o.prx", "--fps", "0"], "'0' must be positive"),
        (["encode", "x.mp4", "-o", "o.prx", "--preset", "ludicrous"], "'ludicrous' is not one of"),
        (["engine", "export", "--size", "big"], "'big' is not a size like 512x512"),
        (["compare", "x.mp4", "--bitrates", "100k", "--fps", "1/0"], "is not a number or a fraction"),
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
