"""The README's commands are the ones CI and the CLI actually have."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = block_after("## Run the tests").splitlines()[-1]
    ci = (ROOT / ".ci" / "run").read_text()
    # CI creates and activates the venv itself; the install + pytest part is the same line.
    install_and_test = command.split("&& . .venv/bin/activate && ", 1)[1]
    assert install_and_test in ci


def test_readme_cli_commands_exist() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in set(re.findall(r"vision-api ([a-z-]+)", README)):
        assert command in help_text, command
