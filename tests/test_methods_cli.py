"""``petvr methods``: every option of every registered method says what it means, and the command shows it."""
from __future__ import annotations

from dataclasses import fields

import pytest

from petvr.cli import main
from petvr.methods import list_heads, list_methods, method_config_class, method_options, method_summary


@pytest.mark.parametrize("name", list_methods())
def test_every_option_is_documented(name):
    """A new method's config must declare each field with ``option(default, help, allowed)``."""
    assert method_summary(name)
    documented = {option.name: option for option in method_options(name)}
    assert list(documented) == [item.name for item in fields(method_config_class(name))]
    for option in documented.values():
        assert option.help.strip(), f"{name}.{option.name} has no meaning; declare it with option(default, help)"


def test_allowed_values_come_from_the_code():
    options = {option.name: option for option in method_options("clip4clip")}
    assert options["sim_header"].allowed == ", ".join(repr(head) for head in list_heads())
    assert options["linear_patch"].allowed == "'2d', '3d'"
    assert "'vision', 'text'" in {option.name: option for option in method_options("lora")}["towers"].allowed


def test_cli_lists_every_method_with_its_options(capsys):
    main(["methods"])
    output = capsys.readouterr().out
    for name in list_methods():
        assert f"{name}: {method_summary(name)}\n" in output
        for option in method_options(name):
            line = f"  {option.name} ({option.type}, default {option.default!r}): {option.help}"
            assert line + (f"; allowed: {option.allowed}" if option.allowed else "") + "\n" in output


def test_cli_shows_one_method(capsys):
    main(["methods", "lora"])
    output = capsys.readouterr().out
    assert output.startswith("lora: LoRA (Hu et al. 2021)")
    assert "  rank (int, default 8): " in output and "; allowed: >= 1\n" in output
    assert "mv_adapter" not in output


def test_cli_refuses_an_unknown_method(capsys):
    with pytest.raises(SystemExit, match="unknown method 'nope'; known methods: adapter"):
        main(["methods", "nope"])
