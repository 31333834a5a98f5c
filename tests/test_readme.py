"""The README's two set-up commands stay true: CI runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_two_commands_and_ci_runs_the_test_one():
    install_and_demo, tests = readme_commands()
    assert "pip install torch==2.13.0" in install_and_demo and install_and_demo.endswith("ssd-deploy demo")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci
