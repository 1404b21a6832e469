"""The pipeline scripts (ci/validate-and-diff, ci/compile-and-publish) run locally.

GitHub and GitLab are not reachable from the tests, so the logic lives in these two scripts
and the workflows only call them. Each test runs a script with bash against a temporary git
repository (main branch plus a feature branch) and a local publish directory.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from click.testing import CliRunner

from compiler.cli import main
from tests.access_samples import BASE_FILES, git, git_commit, git_init, write_access

ROOT = Path(__file__).resolve().parent.parent
VALIDATE_AND_DIFF = ROOT / "ci" / "validate-and-diff"
COMPILE_AND_PUBLISH = ROOT / "ci" / "compile-and-publish"


@pytest.fixture(scope="module")
def doorlock_command(tmp_path_factory) -> Path:
    """A ``doorlock`` executable for the scripts, running this checkout with the test's Python."""
    directory = tmp_path_factory.mktemp("bin")
    shim = directory / "doorlock"
    shim.write_text(f"""#!/bin/sh
PYTHONPATH={ROOT} exec {sys.executable} -c 'import sys; sys.argv[0] = "doorlock"; from compiler.cli import main; main()' "$@"
""")
    shim.chmod(0o755)
    return shim


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    runner = CliRunner()
    for name, extra in (("root", ["--root"]), ("signing", [])):
        result = runner.invoke(main, ["keygen", "--out", str(directory / name), *extra])
        assert result.exit_code == 0, result.output
    signers = directory / "signers.json"
    result = runner.invoke(main, ["signers", "sign", "--root", str(directory / "root.key"),
                                  "--signer", str(directory / "signing.pub"), "--version", "1", "--out", str(signers),
                                  "--now", "2026-12-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    return {"signers": signers, "signing": directory / "signing.key"}


@pytest.fixture
def repo(tmp_path, keys) -> Path:
    """An access repository in git whose main branch contains the base files and the signers document."""
    repository = git_init(tmp_path / "access")
    write_access(repository, {"signers.json": keys["signers"].read_text()})
    git_commit(repository, "base access")
    return repository


def run_script(script: Path, repo: Path, doorlock: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        "PATH": f"{doorlock.parent}:/usr/bin:/bin",
        "HOME": str(repo.parent),
        "TMPDIR": str(repo.parent),
        "DOORLOCK": str(doorlock),
        **env,
    }
    return subprocess.run(["bash", str(script)], cwd=repo, env=environment, capture_output=True,
                          text=True, timeout=300)


def feature_branch(repo: Path, changes: dict[str, str | None]) -> None:
    git(repo, "checkout", "--quiet", "-b", "feature")
    write_access(repo, changes)
    git_commit(repo, "change access")


# -- validate-and-diff ------------------------------------------------------------------------------


def test_pull_request_diff_written(repo, doorlock_command, tmp_path):
    feature_branch(repo, {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, workshop]")})
    out = tmp_path / "diff.md"
    result = run_script(VALIDATE_AND_DIFF, repo, doorlock_command, DOORLOCK_BASE="main", DOORLOCK_DIFF_OUT=str(out))

    assert result.returncode == 0, result.stderr
    markdown = out.read_text()
    assert markdown.startswith("## Access changes: main (")
    assert "gains workshop, Mon–Fri 09:00–18:00 via workshop" in markdown
    assert json.loads((tmp_path / "diff.json").read_text())["people"]["bob"][0]["kind"] == "grant-added"


def test_step_summary_gets_the_diff(repo, doorlock_command, tmp_path):
    feature_branch(repo, {"locks/front-door.yaml": BASE_FILES["locks/front-door.yaml"].replace(
        "valid_days: 7", "valid_days: 30")})
    summary = tmp_path / "summary.md"
    result = run_script(VALIDATE_AND_DIFF, repo, doorlock_command, DOORLOCK_BASE="main",
                        DOORLOCK_DIFF_OUT=str(tmp_path / "diff.md"), GITHUB_STEP_SUMMARY=str(summary),
                        GITHUB_ACTIONS="true")
    assert result.returncode == 0, result.stderr
    assert "Sensitive changes" in summary.read_text()
    assert "offline validity raised 7 → 30 days" in summary.read_text()


def test_invalid_change_annotated_for_github(repo, doorlock_command, tmp_path):
    feature_branch(repo, {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, nosuchgroup]")})
    out = tmp_path / "diff.md"
    result = run_script(VALIDATE_AND_DIFF, repo, doorlock_command, DOORLOCK_BASE="main",
                        DOORLOCK_DIFF_OUT=str(out), GITHUB_ACTIONS="true")

    assert result.returncode == 1
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::error ")]
    assert annotations, result.stdout
    assert "people/bob.yaml" in annotations[0]
    assert "line=" in annotations[0]
    assert "Validation failed" in out.read_text()


def test_gitlab_code_quality_report(repo, doorlock_command, tmp_path):
    feature_branch(repo, {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, nosuchgroup]")})
    report = tmp_path / "gl-code-quality-report.json"
    result = run_script(VALIDATE_AND_DIFF, repo, doorlock_command, DOORLOCK_BASE="main",
                        DOORLOCK_DIFF_OUT=str(tmp_path / "diff.md"), DOORLOCK_CODEQUALITY_OUT=str(report))

    assert result.returncode == 1
    issues = json.loads(report.read_text())
    errors = [issue for issue in issues if issue["severity"] == "major"]
    assert errors, issues
    assert errors[0]["location"]["path"] == "people/bob.yaml"
    assert errors[0]["location"]["lines"]["begin"] >= 1
    assert "nosuchgroup" in errors[0]["description"]


def test_comment_only_change_reports_no_change(repo, doorlock_command, tmp_path):
    feature_branch(repo, {"people/alice.yaml": "# reviewed 2026-12\n" + BASE_FILES["people/alice.yaml"]})
    out = tmp_path / "diff.md"
    result = run_script(VALIDATE_AND_DIFF, repo, doorlock_command, DOORLOCK_BASE="main", DOORLOCK_DIFF_OUT=str(out))
    assert result.returncode == 0, result.stderr
    assert "No change in access" in out.read_text()


def test_missing_base_branch_explained(repo, doorlock_command, tmp_path):
    result = run_script(VALIDATE_AND_DIFF, repo, doorlock_command, DOORLOCK_DIFF_OUT=str(tmp_path / "d.md"))
    assert result.returncode == 2
    assert "fetch the target branch" in result.stderr


# -- compile-and-publish ------------------------------------------------------------------------------


def publish(repo: Path, doorlock: Path, keys: dict[str, Path], target: Path, now: str, **env: str):
    return run_script(
        COMPILE_AND_PUBLISH, repo, doorlock,
        DOORLOCK_SIGNING_KEY=keys["signing"].read_text(), DOORLOCK_PUBLISH_TO=str(target),
        DOORLOCK_NOW=now, **env,
    )


def live_manifest(target: Path) -> dict:
    return json.loads((target / "current" / "manifest.json").read_text())


def test_compile_and_publish_to_directory(repo, doorlock_command, keys, tmp_path):
    target = tmp_path / "www"
    result = publish(repo, doorlock_command, keys, target, "2026-12-04T20:00:00Z")

    assert result.returncode == 0, result.stderr
    manifest = live_manifest(target)
    assert sorted(manifest["bundles"]) == ["front-door", "workshop"]
    assert (target / "current" / "bundles" / "front-door.json").is_file()
    assert json.loads((tmp_path / "published-manifest" / "manifest.json").read_text()) == manifest
    assert "| front-door |" in (tmp_path / "published-manifest" / "summary.md").read_text()


def test_signing_key_never_echoed_or_left_on_disk(repo, doorlock_command, keys, tmp_path):
    target = tmp_path / "www"
    result = publish(repo, doorlock_command, keys, target, "2026-12-04T20:00:00Z")
    assert result.returncode == 0, result.stderr

    pem_body = keys["signing"].read_text().splitlines()[1]
    assert pem_body not in result.stdout + result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    for path in list(repo.rglob("*")) + list(target.rglob("*")) + list(tmp_path.glob("doorlock-publish.*")):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert not list(tmp_path.glob("doorlock-publish.*")), "the work directory was not removed"


def test_signing_key_as_base64(repo, doorlock_command, keys, tmp_path):
    encoded = base64.b64encode(keys["signing"].read_bytes()).decode()
    result = run_script(COMPILE_AND_PUBLISH, repo, doorlock_command, DOORLOCK_SIGNING_KEY=encoded,
                        DOORLOCK_PUBLISH_TO=str(tmp_path / "www"), DOORLOCK_NOW="2026-12-04T20:00:00Z")
    assert result.returncode == 0, result.stderr
    assert encoded not in result.stdout + result.stderr
    assert (tmp_path / "www" / "current" / "manifest.json").is_file()


def test_doorlock_as_interpreter_and_script(repo, keys, tmp_path):
    # The GitLab pipeline sets DOORLOCK to "<venv>/bin/python <venv>/bin/doorlock", two words.
    entry_point = tmp_path / "doorlock-entry-point"
    entry_point.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom compiler.cli import main\nmain()\n")
    command = f"{sys.executable} {entry_point}"
    result = run_script(COMPILE_AND_PUBLISH, repo, Path("/nonexistent/doorlock"), DOORLOCK=command,
                        DOORLOCK_SIGNING_KEY=keys["signing"].read_text(), DOORLOCK_PUBLISH_TO=str(tmp_path / "www"),
                        DOORLOCK_NOW="2026-12-04T20:00:00Z")
    assert result.returncode == 0, result.stderr
    assert sorted(live_manifest(tmp_path / "www")["bundles"]) == ["front-door", "workshop"]


def test_missing_signing_key_fails_before_anything(repo, doorlock_command, tmp_path):
    result = run_script(COMPILE_AND_PUBLISH, repo, doorlock_command, DOORLOCK_PUBLISH_TO=str(tmp_path / "www"))
    assert result.returncode == 1
    assert "DOORLOCK_SIGNING_KEY is not set" in result.stderr
    assert not (tmp_path / "www").exists()


def test_merge_publishes_only_changed_lock(repo, doorlock_command, keys, tmp_path):
    target = tmp_path / "www"
    assert publish(repo, doorlock_command, keys, target, "2026-12-04T20:00:00Z").returncode == 0
    before = live_manifest(target)["bundles"]

    write_access(repo, {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, workshop]")})
    git_commit(repo, "bob joins the workshop")
    result = publish(repo, doorlock_command, keys, target, "2026-12-04T21:00:00Z")

    assert result.returncode == 0, result.stderr
    after = live_manifest(target)["bundles"]
    assert after["workshop"]["version"] > before["workshop"]["version"]
    assert after["front-door"] == before["front-door"]


def test_rerun_without_changes_keeps_bundles(repo, doorlock_command, keys, tmp_path):
    target = tmp_path / "www"
    assert publish(repo, doorlock_command, keys, target, "2026-12-04T20:00:00Z").returncode == 0
    before = live_manifest(target)["bundles"]
    result = publish(repo, doorlock_command, keys, target, "2026-12-04T22:00:00Z")
    assert result.returncode == 0, result.stderr
    assert "uncommitted changes" not in result.stderr
    assert live_manifest(target)["bundles"] == before


def test_scheduled_run_resigns_bundles_near_expiry(repo, doorlock_command, keys, tmp_path):
    target = tmp_path / "www"
    assert publish(repo, doorlock_command, keys, target, "2026-12-04T20:00:00Z").returncode == 0
    before = live_manifest(target)["bundles"]

    # Six days later the 7-day bundles expire within the default two-day margin.
    result = publish(repo, doorlock_command, keys, target, "2026-12-10T20:00:00Z")
    assert result.returncode == 0, result.stderr
    after = live_manifest(target)["bundles"]
    for lock in ("front-door", "workshop"):
        assert after[lock]["version"] > before[lock]["version"]
        assert after[lock]["expires_at"] > before[lock]["expires_at"]


def test_scripts_are_executable():
    for script in (VALIDATE_AND_DIFF, COMPILE_AND_PUBLISH):
        assert os.stat(script).st_mode & stat.S_IXUSR, script


# -- compile-and-publish to a remote host (tar over SSH) -------------------------------------------------

FAKE_SSH = """#!/bin/sh
# Stands in for ssh to the bundle host: logs the arguments and the agent socket, then runs the
# remote command (test, tar, mkdir, doorlock publish) on this machine.
if [ -n "${{FAKE_SSH_UNREACHABLE:-}}" ]; then
    echo "ssh: connect to host bundles.test port 22: Connection refused" >&2
    exit 255
fi
for arg in "$@"; do printf 'arg %s\\n' "$arg" >> {log}; done
printf 'agent %s\\n--\\n' "${{SSH_AUTH_SOCK:-none}}" >> {log}
while [ $# -gt 0 ]; do
    case $1 in
        -o|-l|-p|-i) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
shift
exec sh -c "$*"
"""


@pytest.fixture
def remote(tmp_path, doorlock_command) -> dict:
    """A "remote" bundle host reached through a stand-in ssh; tar and doorlock publish are real."""
    bin_directory = tmp_path / "ssh-bin"
    bin_directory.mkdir()
    log = tmp_path / "ssh.log"
    ssh = bin_directory / "ssh"
    ssh.write_text(FAKE_SSH.format(log=log))
    ssh.chmod(0o755)
    www = tmp_path / "host-www"
    return {
        "www": www,
        "log": log,
        "env": {
            "PATH": f"{bin_directory}:{doorlock_command.parent}:/usr/bin:/bin",
            "DOORLOCK_PUBLISH_TO": f"deploy@bundles.test:{www}",
            "DOORLOCK_SSH_KNOWN_HOSTS": "bundles.test ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleOnlyNotARealHostKey",
            "DOORLOCK_REMOTE_DOORLOCK": str(doorlock_command),
        },
    }


def publish_remote(repo: Path, doorlock: Path, keys: dict[str, Path], remote: dict, now: str, **env: str):
    return run_script(COMPILE_AND_PUBLISH, repo, doorlock, DOORLOCK_SIGNING_KEY=keys["signing"].read_text(),
                      DOORLOCK_NOW=now, **{**remote["env"], **env})


def test_remote_first_publish_over_ssh(repo, doorlock_command, keys, remote, tmp_path):
    result = publish_remote(repo, doorlock_command, keys, remote, "2026-12-04T20:00:00Z")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "this is the first publish" in result.stdout
    assert sorted(live_manifest(remote["www"])["bundles"]) == ["front-door", "workshop"]
    assert list((remote["www"] / ".incoming").iterdir()) == [], "the uploaded build was not removed"
    log = remote["log"].read_text()
    assert "arg StrictHostKeyChecking=yes" in log
    assert "arg BatchMode=yes" in log
    assert "bundles.test" in log
    assert "tar -xf - -C" in log  # the build travelled as a tar stream over ssh
    assert "publish" in log  # and doorlock publish swapped it in on the host


def test_remote_publish_continues_from_live_release(repo, doorlock_command, keys, remote):
    assert publish_remote(repo, doorlock_command, keys, remote, "2026-12-04T20:00:00Z").returncode == 0
    before = live_manifest(remote["www"])["bundles"]
    front_door = (remote["www"] / "current" / "bundles" / "front-door.json").read_bytes()

    write_access(repo, {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, workshop]")})
    git_commit(repo, "bob joins the workshop")
    result = publish_remote(repo, doorlock_command, keys, remote, "2026-12-04T21:00:00Z")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "first publish" not in result.stdout
    after = live_manifest(remote["www"])["bundles"]
    assert after["workshop"]["version"] > before["workshop"]["version"]
    assert after["front-door"] == before["front-door"]
    assert (remote["www"] / "current" / "bundles" / "front-door.json").read_bytes() == front_door


def test_remote_ssh_key_only_in_a_private_agent(repo, doorlock_command, keys, remote, tmp_path):
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploy", "-f", str(key)], check=True)
    secret = key.read_text()
    key.unlink()

    result = publish_remote(repo, doorlock_command, keys, remote, "2026-12-04T20:00:00Z", DOORLOCK_SSH_KEY=secret)

    assert result.returncode == 0, result.stdout + result.stderr
    assert secret.splitlines()[1] not in result.stdout + result.stderr
    sockets = {line.split(" ", 1)[1] for line in remote["log"].read_text().splitlines() if line.startswith("agent ")}
    assert len(sockets) == 1, sockets
    assert sockets != {"none"}, sockets
    socket = sockets.pop()
    assert not Path(socket).exists(), "the agent's directory was not removed"
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert socket.encode() not in status.read_bytes(), "ssh-agent still runs after the job"
        except OSError:
            continue
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"OPENSSH PRIVATE KEY" not in path.read_bytes(), path


def test_remote_unreachable_host_fails_clearly(repo, doorlock_command, keys, remote):
    result = publish_remote(repo, doorlock_command, keys, remote, "2026-12-04T20:00:00Z", FAKE_SSH_UNREACHABLE="1")
    assert result.returncode == 1
    assert "cannot reach deploy@bundles.test" in result.stderr
    assert "ssh exit status 255" in result.stderr
    assert "connection or login failed" in result.stderr
    assert "this is the first publish" not in result.stdout
    assert not remote["www"].exists()


def test_remote_without_known_hosts_fails_before_upload(repo, doorlock_command, keys, remote):
    env = {**remote["env"], "DOORLOCK_SSH_KNOWN_HOSTS": ""}
    result = run_script(COMPILE_AND_PUBLISH, repo, doorlock_command, DOORLOCK_SIGNING_KEY=keys["signing"].read_text(),
                        DOORLOCK_NOW="2026-12-04T20:00:00Z", **env)
    assert result.returncode == 1
    assert "DOORLOCK_SSH_KNOWN_HOSTS is not set" in result.stderr
    assert not remote["www"].exists()
    assert not remote["log"].exists()


# -- workflow definitions ---------------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_github_workflows_call_the_scripts():
    validate = load_yaml(ROOT / "ci" / "github" / "validate.yml")
    publish_flow = load_yaml(ROOT / "ci" / "github" / "publish.yml")
    validate_runs = [step.get("run", "") for step in validate["jobs"]["validate"]["steps"]]
    publish_steps = publish_flow["jobs"]["publish"]["steps"]

    assert any(".doorlock/ci/validate-and-diff" in run for run in validate_runs)
    assert any("gh pr comment" in run for run in validate_runs)
    assert any(step.get("run") == ".doorlock/ci/compile-and-publish" for step in publish_steps)
    # PyYAML reads the bare key "on" as True.
    triggers = publish_flow[True]
    assert set(triggers) == {"push", "schedule", "workflow_dispatch"}
    assert publish_flow["concurrency"]["cancel-in-progress"] is False


def steps_mentioning(text: str, steps: list[dict]) -> list[dict]:
    return [step for step in steps if text in json.dumps(step)]


def test_github_signing_key_only_in_compile_step():
    publish_flow = load_yaml(ROOT / "ci" / "github" / "publish.yml")
    job = publish_flow["jobs"]["publish"]
    compile_step = next(step for step in job["steps"] if step.get("run") == ".doorlock/ci/compile-and-publish")

    # A secret in the workflow's or the job's env would reach every step, pip install included.
    assert "secrets." not in json.dumps(publish_flow.get("env") or {})
    assert "secrets." not in json.dumps(job.get("env") or {})
    assert steps_mentioning("secrets.DOORLOCK_SIGNING_KEY", job["steps"]) == [compile_step]
    assert compile_step["env"]["DOORLOCK_SIGNING_KEY"] == "${{ secrets.DOORLOCK_SIGNING_KEY }}"
    assert "uses" not in compile_step
    install_steps = [step for step in job["steps"] if "pip install" in step.get("run", "")]
    assert install_steps, "the workflow no longer installs doorlock in its own step"
    for step in install_steps + [step for step in job["steps"] if "uses" in step]:
        assert "secrets." not in json.dumps(step), step


def test_github_validate_workflow_has_no_secret():
    text = (ROOT / "ci" / "github" / "validate.yml").read_text()
    assert "secrets." not in text
    for job in load_yaml(ROOT / "ci" / "github" / "validate.yml")["jobs"].values():
        for step in job["steps"]:
            assert "DOORLOCK_SIGNING_KEY" not in json.dumps(step), step


GITLAB_KEYWORDS = {"variables", "default", "stages", "workflow", "include"}
INSTALL_COMMANDS = ("apt-get", "apt ", "pip", "git clone", "curl", "wget", "apk ", "npm")


def gitlab_jobs(pipeline: dict) -> dict[str, dict]:
    """Return the pipeline's jobs and templates (keys starting with a dot), without the global keywords."""
    return {name: job for name, job in pipeline.items() if name not in GITLAB_KEYWORDS}


def job_commands(pipeline: dict, job: dict) -> list[str]:
    """Return every shell line a job runs: its template's before_script unless overridden, then its script."""
    before = job.get("before_script")
    if before is None and "extends" in job:
        before = pipeline[job["extends"]].get("before_script")
    if before is None:
        before = pipeline.get("default", {}).get("before_script", [])
    return [*before, *job.get("script", []), *job.get("after_script", [])]


def test_gitlab_keys_only_in_publish_job():
    pipeline = load_yaml(ROOT / "ci" / "gitlab-ci.yml")
    jobs = gitlab_jobs(pipeline)

    # GitLab gives a variable scoped to an environment only to jobs deploying to it.
    with_environment = [name for name, job in jobs.items() if "environment" in job]
    assert with_environment == ["publish"]
    assert jobs["publish"]["environment"] == "production"
    assert "DOORLOCK_SIGNING_KEY" not in json.dumps(pipeline.get("variables", {}))
    assert "before_script" not in pipeline.get("default", {})


def test_gitlab_publish_job_installs_nothing():
    pipeline = load_yaml(ROOT / "ci" / "gitlab-ci.yml")
    publish_job = pipeline["publish"]

    assert publish_job["before_script"] == []
    assert "extends" not in publish_job
    assert publish_job["script"] == [".doorlock/ci/compile-and-publish"]
    for line in job_commands(pipeline, publish_job):
        for command in INSTALL_COMMANDS:
            assert command not in line, line
    assert publish_job["needs"] == ["install"]
    install_lines = " ".join(job_commands(pipeline, pipeline["install"]))
    assert "pip install" in install_lines
    assert ".doorlock-venv/" in pipeline["install"]["artifacts"]["paths"]


def test_gitlab_other_jobs_stop_on_key(tmp_path):
    pipeline = load_yaml(ROOT / "ci" / "gitlab-ci.yml")
    jobs = gitlab_jobs(pipeline)
    for name, job in jobs.items():
        if name.startswith(".") or name == "publish":
            continue
        assert job.get("extends") == ".without-keys", name
        assert "before_script" not in job, name
    guard = "\n".join(pipeline[".without-keys"]["before_script"])
    assert "pip" not in guard
    assert "apt-get" not in guard

    base_env = {"PATH": "/usr/bin:/bin", "CI_JOB_NAME": "install"}
    for secret in ("DOORLOCK_SIGNING_KEY", "DOORLOCK_SSH_KEY"):
        stopped = subprocess.run(["bash", "-c", guard], env={**base_env, secret: "c2VjcmV0"},
                                 capture_output=True, text=True)
        assert stopped.returncode == 1, secret
        assert "reached job install" in stopped.stderr
        assert "environment scope" in stopped.stderr
        assert "c2VjcmV0" not in stopped.stderr
    passed = subprocess.run(["bash", "-c", guard], env=base_env, capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr


def test_gitlab_pipeline_jobs():
    pipeline = load_yaml(ROOT / "ci" / "gitlab-ci.yml")
    assert ".doorlock/ci/compile-and-publish" in pipeline["publish"]["script"]
    assert pipeline["publish"]["resource_group"] == "doorlock-publish"
    assert any("validate-and-diff" in line for line in pipeline["validate"]["script"])
    assert pipeline["stages"] == ["prepare", "validate", "publish"]
    sources = " ".join(rule["if"] for rule in pipeline["publish"]["rules"])
    assert "schedule" in sources
    assert "push" in sources
    assert "merge_request_event" not in sources


# -- GitLab merge-request note ------------------------------------------------------------------


class FakeGitLab(ThreadingHTTPServer):
    """The part of the GitLab REST API the validate job calls, with notes kept in memory."""

    def __init__(self, bot_id: int):
        super().__init__(("127.0.0.1", 0), FakeGitLabHandler)
        self.bot_id = bot_id
        self.notes: list[dict] = []
        self.requests: list[tuple[str, str]] = []


class FakeGitLabHandler(BaseHTTPRequestHandler):
    server: FakeGitLab
    notes_path = "/api/v4/projects/7/merge_requests/3/notes"

    def log_message(self, format, *args):  # keep the test output quiet
        pass

    def reply(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def note_body(self) -> str:
        length = int(self.headers["Content-Length"])
        return parse_qs(self.rfile.read(length).decode())["body"][0]

    def do_GET(self):
        self.server.requests.append(("GET", self.path))
        if self.headers.get("PRIVATE-TOKEN") != "glpat-test":
            self.reply(401, {"message": "401 Unauthorized"})
        elif self.path == "/api/v4/user":
            self.reply(200, {"id": self.server.bot_id, "username": "project_7_bot"})
        elif self.path.split("?")[0] == self.notes_path:
            self.reply(200, self.server.notes)
        else:
            self.reply(404, {"message": "404 Not Found"})

    def do_POST(self):
        self.server.requests.append(("POST", self.path))
        note = {"id": 100 + len(self.server.notes), "author": {"id": self.server.bot_id}, "body": self.note_body()}
        self.server.notes.append(note)
        self.reply(201, note)

    def do_PUT(self):
        self.server.requests.append(("PUT", self.path))
        note_id = int(self.path.rsplit("/", 1)[1])
        note = next(note for note in self.server.notes if note["id"] == note_id)
        note["body"] = self.note_body()
        self.reply(200, note)


@pytest.fixture
def gitlab():
    server = FakeGitLab(bot_id=42)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def post_note(gitlab: FakeGitLab, directory: Path, diff: str, token: str = "glpat-test") -> subprocess.CompletedProcess:
    """Run the validate job's note step as GitLab would, against the fake API."""
    pipeline = load_yaml(ROOT / "ci" / "gitlab-ci.yml")
    step = next(line for line in pipeline["validate"]["script"] if "DOORLOCK_GITLAB_TOKEN" in line)
    (directory / "access-diff.md").write_text(diff)
    environment = {
        "PATH": "/usr/bin:/bin",
        "DOORLOCK_GITLAB_TOKEN": token,
        "CI_API_V4_URL": f"http://127.0.0.1:{gitlab.server_port}/api/v4",
        "CI_PROJECT_ID": "7",
        "CI_MERGE_REQUEST_IID": "3",
    }
    return subprocess.run(["bash", "-e", "-c", step], cwd=directory, env=environment, capture_output=True,
                          text=True, timeout=60)


def test_gitlab_note_updated_on_each_push(gitlab, tmp_path):
    first = post_note(gitlab, tmp_path, "## Access changes\n\nbob gains workshop\n")
    assert first.returncode == 0, first.stderr
    second = post_note(gitlab, tmp_path, "## Access changes\n\nbob gains front-door\n")
    assert second.returncode == 0, second.stderr

    assert len(gitlab.notes) == 1
    assert "bob gains front-door" in gitlab.notes[0]["body"]
    assert "bob gains workshop" not in gitlab.notes[0]["body"]
    assert [method for method, _ in gitlab.requests if method != "GET"] == ["POST", "PUT"]


def test_gitlab_note_of_someone_else_left_alone(gitlab, tmp_path):
    # A reviewer quoting the marker must not make the job edit the reviewer's note.
    gitlab.notes.append({"id": 7, "author": {"id": 5}, "body": "<!-- doorlock access diff -->\nlooks fine"})
    result = post_note(gitlab, tmp_path, "## Access changes\n\nNo change in access\n")

    assert result.returncode == 0, result.stderr
    assert gitlab.notes[0]["body"].endswith("looks fine")
    assert len(gitlab.notes) == 2
    assert gitlab.notes[1]["body"].startswith("<!-- doorlock access diff -->")
    assert "No change in access" in gitlab.notes[1]["body"]


def test_gitlab_note_rejected_token_fails_step(gitlab, tmp_path):
    result = post_note(gitlab, tmp_path, "## Access changes\n", token="glpat-revoked")
    assert result.returncode != 0
    assert "401" in result.stderr
    assert gitlab.notes == []
    assert "glpat-revoked" not in result.stdout + result.stderr


def test_pre_commit_hook_runs_validate(repo, doorlock_command):
    import re

    hooks = load_yaml(ROOT / ".pre-commit-hooks.yaml")
    hook = next(h for h in hooks if h["id"] == "doorlock-validate")
    pattern = re.compile(hook["files"])
    assert pattern.search("people/alice.yaml")
    assert pattern.search("schedules/nested/late.yml")
    assert pattern.search("certs/front-door.pem")  # validate checks certificate files too
    assert not pattern.search("README.md")

    write_access(repo, {"people/bob.yaml": BASE_FILES["people/bob.yaml"].replace(
        "groups: [members]", "groups: [members, nosuchgroup]")})
    command = hook["entry"].split()
    result = subprocess.run([str(doorlock_command), *command[1:]], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1
    assert "people/bob.yaml" in result.stdout
