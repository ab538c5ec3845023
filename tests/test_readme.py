"""The README's test command is what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert len(ci_lines) == 1
    assert ci_lines[0] in readme.splitlines()


def test_the_api_example_runs_as_written():
    """The README's ten-line example, verbatim: its imports resolve and it prints a balance point inside its CI."""
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    code = readme.split("## The API in ten lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    point, ci = done.stdout.strip().splitlines()[-1].split(" ", 1)
    low, high = (float(v) for v in ci.strip("()").split(","))
    assert low < float(point) < high
