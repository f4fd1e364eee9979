"""The README and docs/ as a new user reads them: every Python block runs as written, every relative link points
at a file that exists, and the README's commands point at real files."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgecnn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
PYTHON_BLOCKS = BLOCK.findall(README)
DOCS = sorted((ROOT / "docs").rglob("*.md"))
# Pages whose Python blocks are fragments (they name an `image` or a `path` the page does not define): their blocks
# are not run; their links are checked like every other page's.
FRAGMENT_PAGES = {"docs/early_exit.md", "docs/explain.md"}
DOC_BLOCKS = [(page.relative_to(ROOT).as_posix(), i, code) for page in DOCS
              if page.relative_to(ROOT).as_posix() not in FRAGMENT_PAGES
              for i, code in enumerate(BLOCK.findall(page.read_text()))]
# [text](target) and ![alt](target); a target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _torchrun_line() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in README.splitlines() if "torchrun" in line.split("#", 1)[0]]
    assert len(lines) == 1, "one torchrun command in the README"
    return shlex.split(lines[0])


def test_readme_has_python_blocks() -> None:
    assert len(PYTHON_BLOCKS) >= 1
    assert len(DOC_BLOCKS) >= 2, "the docs' Python blocks (your_model.md, export.md) run here"


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the blocks write runs/ and artifacts/ where they are run
    code = compile(PYTHON_BLOCKS[index], f"README.md python block {index + 1}", "exec")
    exec(code, {"__name__": "__readme__"})


@pytest.mark.parametrize("page,index", [(page, i) for page, i, _ in DOC_BLOCKS],
                         ids=[f"{page}-{i + 1}" for page, i, _ in DOC_BLOCKS])
def test_docs_python_block_runs_as_written(page: str, index: int, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = next(code for p, i, code in DOC_BLOCKS if (p, i) == (page, index))
    exec(compile(source, f"{page} python block {index + 1}", "exec"), {"__name__": "__readme__"})


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_existing_files(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code blocks hold no links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_torchrun_line_works_from_the_repo_root_without_an_activated_venv() -> None:
    argv = _torchrun_line()
    launcher, program = argv[0], argv[argv.index("--no-python") + 1]
    for path in (launcher, program):
        assert not Path(path).is_absolute() and path.startswith(".venv/bin/"), \
            f"{path}: the README's set-up makes .venv in the repository root; name its programs there"
    venv = ROOT / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip(f"these tests run from {sys.prefix}, not the README's {venv}")
    assert (ROOT / launcher).is_file() and (ROOT / program).is_file()
    edgecnn_args = argv[argv.index("--no-python") + 2:]
    assert build_parser().parse_args(edgecnn_args).command == "train"


@pytest.mark.slow
def test_torchrun_line_trains_with_two_processes(tmp_path: Path) -> None:
    """The README's command as written, shortened to one epoch on 512 images of LeNet-5."""
    argv = _torchrun_line()
    start = argv.index("--no-python") + 2
    argv = argv[:start] + ["train", "lenet5_fmnist", "--epochs", "1", "--limit", "512",
                           "--out", str(tmp_path / "ddp.safetensors")]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "ddp.safetensors").is_file()


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    """.ci/run runs tests/setup_and_run.sh, whose command must be the README's set-up command 2, character for character."""
    block = README.split("<!-- test-command -->", 1)[1]
    quoted = re.search(r"^```\n(.*?)\n```", block, flags=re.M | re.S).group(1).strip()
    script = (ROOT / "tests" / "setup_and_run.sh").read_text().splitlines()
    assert script[-1] == quoted
    assert "bash tests/setup_and_run.sh" in (ROOT / ".ci" / "run").read_text()
