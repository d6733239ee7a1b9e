"""The documentation: every example in docs/ and the README runs as written against a fresh demo
output, the generated reference covers every command and option, every option the pages mention
exists, and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from graphopt import reference
from graphopt.passes import pass_class
from graphopt.pipeline import recipe_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
DEMO = ["run", "--zoo", "minilm", "--out", "demo-out", "--preset", "O3", "--target", "ort", "--quantize", "dynamic",
        "--bench-shape", "input_ids=1x128"]
RUNNABLE = ("bash", "python")
MARKER = re.compile(r"<!-- docs-test: (skip|exit) ?(.*?) -->")  # exit 1, or exit 0|1 where timing decides
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)
OTHER_TOOLS_FLAGS = {"--full", "--strict"}  # pytest's and mkdocs'


@dataclasses.dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    skip: str | None = None
    exit_codes: tuple[int, ...] = (0,)

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        marker = MARKER.fullmatch(before[-1].strip()) if before else None
        block = Block(page, text.count("\n", 0, match.start()) + 1, match.group(1),
                      SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text().rstrip("\n"), match.group(2)))
        if marker and marker.group(1) == "skip":
            block.skip = marker.group(2) or "unexplained"
        elif marker:
            block.exit_codes = tuple(int(code) for code in marker.group(2).split()[0].split("|"))
        blocks.append(block)
    return blocks


def _runnable(page: Path) -> list[Block]:
    return [block for block in _blocks(page) if block.language in RUNNABLE and block.skip is None]


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> Path:
    """A fresh `make demo` output, made once per test session and shared by the xdist workers."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with FileLock(str(shared / "demo.lock")):
        folder = shared / "demo"
        if not (folder / "demo-out" / "report.md").exists():
            folder.mkdir(exist_ok=True)
            done = subprocess.run([_graphopt(), *DEMO], cwd=folder, env=_env(), capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
    return folder / "demo-out"


def _graphopt() -> str:
    return str(Path(sys.executable).with_name("graphopt"))


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1"}


def _workdir(tmp_path: Path, demo_out: Path) -> Path:
    """A folder as a user has it after `make demo`: demo-out/ (hard links: a command replacing a file
    there leaves the shared one alone), examples/ and .venv/."""
    shutil.copytree(demo_out, tmp_path / "demo-out", copy_function=os.link)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    return tmp_path


@pytest.mark.parametrize("page", [page for page in PAGES if _runnable(page)],
                         ids=lambda page: str(page.relative_to(ROOT)))
def test_examples_run_as_written(page, demo_out, tmp_path):
    workdir = _workdir(tmp_path, demo_out)
    for block in _runnable(page):
        command = ["bash", "-euo", "pipefail", "-c", block.code] if block.language == "bash" else \
            [sys.executable, "-c", block.code]
        done = subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=900)
        assert done.returncode in block.exit_codes, f"{block} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{block} crashed:\n{done.stderr}"


def test_a_skipped_block_says_why():
    for page in PAGES:
        for block in _blocks(page):
            assert block.skip != "unexplained", f"{block}: <!-- docs-test: skip REASON --> needs a reason"


def test_every_command_has_a_page_in_the_nav():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = re.findall(r"'(commands/[\w-]+\.md)'", str(nav))
    for name in reference.commands():
        page = DOCS / "commands" / f"{name}.md"
        assert page.exists() and f"<!-- graphopt:command {name} -->" in page.read_text(), name
        assert f"commands/{name}.md" in listed, f"{name} is not in mkdocs.yml's nav"


def _all_flags() -> dict[str | None, set[str]]:
    flags: dict[str | None, set[str]] = {}
    for name in [None, *reference.commands()]:
        flags[name] = {flag for param in reference.command_params(name) if isinstance(param, click.Option)
                       for flag in reference.option_flags(param)} | {"-h", "--help"}
    return flags


def test_every_option_has_help_and_appears_in_the_reference():
    for name in [None, *reference.commands()]:
        table = reference.options_table(name)
        for param in reference.command_params(name):
            if isinstance(param, click.Option):
                assert param.help, f"graphopt {name or ''} {param.opts[0]} has no help text"
                for flag in reference.option_flags(param):
                    assert f"`{flag}`" in table


def test_documented_options_exist():
    """Every `graphopt CMD --flag` in a code block is an option of CMD; every `--flag` in the prose is
    an option of some command."""
    flags = _all_flags()
    known = set().union(*flags.values()) | OTHER_TOOLS_FLAGS
    for page in PAGES:
        text = page.read_text()
        for block in _blocks(page):
            for line in block.code.replace("\\\n", " ").splitlines():
                match = re.match(r"\s*(?:\.venv/bin/)?graphopt\s+((?:--plugin\s+\S+\s+)*)(\w+)(.*)", line)
                if match and match.group(2) in flags:
                    for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", match.group(3).split("#")[0]):
                        assert flag in flags[match.group(2)] | flags[None], \
                            f"{block}: graphopt {match.group(2)} has no option {flag}"
        prose = FENCE.sub("", text)
        for span in re.findall(r"`([^`\n]+)`", prose):
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", span):
                assert flag in known, f"{page.relative_to(ROOT)}: `{span}` names {flag}, which no command has"


def test_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_example_recipe_is_valid():
    spec = recipe_spec(ROOT / "examples" / "recipe.toml")
    assert spec.fixed_point and spec.passes[1] == ("fold_constants", {"max_growth_bytes": 1048576})


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    quantize = (site / "commands" / "quantize" / "index.html").read_text()
    assert "--outlier-mode" in quantize and "graphopt quantize [OPTIONS] MODEL [OUTPUT]" in quantize
    passes = (site / "reference" / "passes" / "index.html").read_text()
    ours = [name for name in reference.pass_names() if pass_class(name).__module__.startswith("graphopt.")]
    assert all(f"<code>{name}</code>" in passes for name in ours)  # not the passes other tests registered
    assert (site / "benchmarks" / "results" / "quant_vs_ort.png").exists()
