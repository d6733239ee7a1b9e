"""The README's Python example and recipe run as written."""

from __future__ import annotations

import re
from pathlib import Path

import graphopt
from graphopt.pipeline import recipe_spec

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "['Relu']" in capsys.readouterr().out


def test_example_recipe_is_valid():
    spec = recipe_spec(ROOT / "examples" / "recipe.toml")
    assert spec.fixed_point and spec.passes[1] == ("fold_constants", {"max_growth_bytes": 1048576})


def test_every_pass_is_documented():
    for info in graphopt.list_passes():
        if not info.name.startswith("test_"):  # passes the tests register
            assert f"`{info.name}`" in README, info.name
