"""The operator's guide, run as a test: a Pi, two worker hosts and a laptop.

Each machine is a separate Unix user (created here: the test needs root), the
Pi's ledger user is created by the guide's install script, Debian's sshd
listens on loopback as the Pi, and the package is a wheel built here from a
copy of the working tree, installed by the guide's commands into each
machine's own virtualenv (dependencies from wheels downloaded once, no index).
The shell blocks of docs/operators.md marked `<!-- field-test: NAME -->` are
run as they are, so the guide and this test cannot drift; the test only does
what the guide leaves to the operator's hands (copying files between machines,
pinning the Pi's host key, starting what systemd would start).

Network namespaces are not used: every "host" reaches the Pi at 127.0.0.1
under the name `pi` (an ssh_config Host entry), which is what the guide's
commands see.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.field, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operators.md"
SSHD = Path("/usr/sbin/sshd")
PI_USER, OPERATOR = "tlf-pi", "tlf-op"
HOSTS = {"w1": "tlf-w1", "w2": "tlf-w2"}
BLOCK_RE = re.compile(r"<!-- field-test: ([\w-]+) -->\n```(?:sh|bash)\n(.*?)```", re.S)
# The guide says `sudo`; here the test is root already.
SUDO_SHIM = ('sudo() { if [ "$1" = -u ]; then u=$2; shift 2; runuser -u "$u" -- "$@"; '
             'else "$@"; fi; }\n')
RUNTIME_DEPS = ["pydantic", "watchdog", "zstandard", "psutil"]
EXTRA_DEPS = ["xgboost-cpu", "numpy"]  # install-worker.sh --extras xgboost
JOBS_TOML = """\
[[jobs]]
name = "gbt-a"
model = "gbt"
seed = 1
allowed_hosts = ["w1"]
hyper = { n_estimators = 10, max_depth = 3, n_samples = 400, n_features = 4 }

[[jobs]]
name = "gbt-b"
model = "gbt"
seed = 2
allowed_hosts = ["w2"]
hyper = { n_estimators = 10, max_depth = 3, n_samples = 400, n_features = 4 }

[[jobs]]
name = "gbt-c"
model = "gbt"
mode = "oracle"
hyper = { n_estimators = 10, max_depth = 3, n_samples = 400, n_features = 4 }

[[jobs]]
name = "gbt-d"
model = "gbt"
seed = 7
hyper = { n_estimators = 10, max_depth = 3, n_samples = 400, n_features = 4 }
"""


def guide_blocks() -> dict[str, str]:
    return {m[1]: m[2] for m in BLOCK_RE.finditer(GUIDE.read_text())}


def sh(*argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{shlex.join(argv)}: {proc.stderr or proc.stdout}"
    return proc


def user_python() -> str | None:
    """An interpreter other users can run, of this Python's version (the
    downloaded wheels are for it): the one this venv came from is often under
    /root (pyenv), so look in the system's places too."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                      f"/usr/local/bin/python{version}"):
        probe = subprocess.run(["runuser", "-u", "nobody", "--", candidate, "-c",
                                "import ensurepip, venv, sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    return None


def install_sshd() -> str | None:
    if SSHD.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no /usr/sbin/sshd and no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "openssh-server"]):
        if subprocess.run(argv, capture_output=True, env=env, timeout=600).returncode != 0:
            return f"`{' '.join(argv)}` failed"
    return None if SSHD.exists() else "openssh-server has no /usr/sbin/sshd"


@dataclass
class Field:
    root: Path
    python: str
    blocks: dict[str, str]
    port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------ places
    @property
    def pi_home(self) -> Path:
        return self.root / "pi" / "srv" / "trainledger"

    @property
    def ledger(self) -> Path:
        return self.pi_home / "ledger.git"

    def home(self, user: str) -> Path:
        return Path(sh("getent", "passwd", user).stdout.split(":")[5])

    def env(self, **extra: str) -> dict[str, str]:
        """What every guide block sees: the guide's variables, pip offline."""
        return {
            "PATH": f"{self.root / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                    "/sbin:/bin",
            "LANG": "C.UTF-8", "TL_USER": PI_USER, "TL_HOME": str(self.pi_home),
            "TL_PYTHON": self.python, "TL_START": "0",
            "PIP_NO_INDEX": "1", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_FIND_LINKS": f"{self.root / 'wheels'} {self.root / 'dist'}",
            **extra}

    # ------------------------------------------------------------ running
    def block(self, name: str, user: str, cwd: Path, *, pre: tuple[str, ...] = (),
              **extra: str) -> str:
        """Run the guide's block `name` (after blocks `pre`, e.g. an env block)."""
        return self.script(self.blocks[name], user, cwd, pre=pre, label=name, **extra)

    def script(self, text: str, user: str, cwd: Path, *, pre: tuple[str, ...] = (),
               label: str = "script", **extra: str) -> str:
        name = label
        script = SUDO_SHIM + "".join(self.blocks[p] for p in pre) + text
        env = self.env(**extra)
        argv = ["bash", "-euo", "pipefail", "-c", script]
        if user != "root":
            home = self.home(user)
            env = {**env, "HOME": str(home), "USER": user, "LOGNAME": user}
            argv = ["runuser", "-u", user, "--", "env", "-i",
                    *(f"{k}={v}" for k, v in env.items()), *argv]
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        self.timings[f"{name} ({user})"] = round(time.monotonic() - start, 1)
        assert proc.returncode == 0, (f"guide block {name!r} as {user} failed "
                                      f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def as_user(self, user: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        home = self.home(user)
        return sh("runuser", "-u", user, "--", "env", f"HOME={home}", "PATH=/usr/bin:/bin",
                  *argv, timeout=timeout, cwd=home)  # not the checkout: it is importable

    def start_unit(self, unit: Path) -> subprocess.Popen:
        """What systemd would run: the unit's ExecStart, as its User, with its Environment."""
        text = unit.read_text()
        user = re.search(r"^User=(.+)$", text, re.M)[1]
        argv = shlex.split(re.search(r"^ExecStart=(.+)$", text, re.M)[1])
        env = [f"{k}={v}" for k, v in re.findall(r'^Environment="([^=]+)=(.*)"$', text, re.M)]
        log = (self.root / f"{unit.stem}-{user}.log").open("ab")
        proc = subprocess.Popen(["runuser", "-u", user, "--", "env", "-i",
                                 f"HOME={self.home(user)}", "PATH=/usr/bin:/bin", *env, *argv],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd="/")  # as systemd runs a unit
        self.procs.append(proc)
        return proc

    def start_launcher(self, launcher: Path, user: str) -> subprocess.Popen:
        log = (self.root / f"trainledger-worker-{user}.log").open("ab")
        proc = subprocess.Popen([str(launcher)], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd="/")
        self.procs.append(proc)
        return proc

    def status(self) -> dict:
        out = self.as_user(PI_USER, str(self.root / "pi" / "opt" / "bin" / "reconciler"),
                           "status", "--ledger", str(self.ledger), "--json").stdout
        return json.loads(out)

    def wait(self, what: str, predicate, timeout: float = 180.0):
        start = time.monotonic()
        deadline = start + timeout
        while True:
            value = predicate()
            if value:
                self.timings[f"wait: {what}"] = round(time.monotonic() - start, 1)
                return value
            for proc in self.procs:
                assert proc.poll() is None, f"{proc.args[-1]!r} exited while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            time.sleep(0.3)

    def jobs(self) -> dict[str, str]:
        return {j["name"]: j["status"] for j in self.status()["jobs"]}


def add_user(name: str, home: Path) -> None:
    home.parent.mkdir(parents=True, exist_ok=True)
    sh("useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh",
       "--user-group", name)
    sh("usermod", "-p", "*", name)


def remove_user(name: str) -> None:
    if subprocess.run(["id", "-u", name], capture_output=True).returncode == 0:
        subprocess.run(["userdel", "-f", name], capture_output=True, timeout=60)


def pin_pi(f: Field, user: str, host_key: Path) -> None:
    """What the operator does by hand once per account: name the Pi and pin its
    host key (the guide's ssh-keyscan, checked against the fingerprint)."""
    home = f.home(user)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "config").write_text(f"Host pi\n  HostName 127.0.0.1\n  Port {f.port}\n"
                                    "  HostKeyAlias pi\n  StrictHostKeyChecking yes\n")
    kind, blob = host_key.read_text().split()[:2]
    (ssh_dir / "known_hosts").write_text(f"pi {kind} {blob}\n")
    for p in (ssh_dir, ssh_dir / "config", ssh_dir / "known_hosts"):
        shutil.chown(p, user, user)
    (ssh_dir / "config").chmod(0o600)


def start_sshd(f: Field) -> None:
    d = f.root / "sshd"
    d.mkdir(mode=0o700)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        f.port = s.getsockname()[1]
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {f.port}", f"HostKey {d / 'host_key'}",
        f"PidFile {d / 'sshd.pid'}", f"AllowUsers {PI_USER}", "StrictModes yes",
        "AuthorizedKeysFile .ssh/authorized_keys", "PermitUserEnvironment no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "UsePAM no", "MaxStartups 100:30:200", "MaxSessions 100",
        "LogLevel VERBOSE", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=(f.root / "sshd.log").open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    f.procs.append(proc)
    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", f.port)) == 0

    f.wait("sshd to listen", listening, timeout=20)


def build_wheels(f: Field) -> None:
    """The wheel from a copy of the working tree (tracked and new files: what a
    fresh clone of this commit holds), and its dependencies as wheels, once."""
    src = f.root / "src"
    if not sh("git", "-C", str(REPO), "status", "--porcelain").stdout.strip():
        sh("git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(src))  # a fresh clone
    else:  # work in progress: what a clone of it would hold once committed
        files = sh("git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                   "-z").stdout
        for rel in filter(None, files.split("\0")):
            if (REPO / rel).is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_DEPS + EXTRA_DEPS]
    parallel(lambda: sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "-w", str(f.root / "dist"), str(src),
                        timeout=300),
             lambda: sh(sys.executable, "-m", "pip", "download", "--quiet",
                        "--only-binary=:all:", "-d", str(f.root / "wheels"), *pins,
                        timeout=300))


@pytest.fixture
def fleet_field() -> Iterator[Field]:
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("useradd"):
        pytest.skip("the field test creates Unix users: it needs root, runuser and useradd")
    why = install_sshd()
    if why:
        pytest.skip(f"needs Debian's openssh-server: {why}")
    python = user_python()
    if python is None:
        pytest.skip(f"no Python {sys.version_info[:2]} that other users can run")
    root = Path(tempfile.mkdtemp(prefix="tlfield-", dir="/tmp"))
    root.chmod(0o755)
    f = Field(root, python, guide_blocks())
    (root / "bin").mkdir()
    (root / "bin" / "python3").symlink_to(python)  # the guide's `python3` on the laptop
    try:
        for user in (PI_USER, OPERATOR, *HOSTS.values()):
            remove_user(user)  # a run killed before its teardown
        f.users = [PI_USER, OPERATOR, *HOSTS.values()]
        yield f
    finally:
        print(f"field test timings (s): {f.timings}")
        down = time.monotonic()
        for proc in reversed(f.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(f"field test teardown: processes {time.monotonic() - down:.1f} s")
        for host, user in HOSTS.items():  # the workers' ssh masters (ControlPersist)
            for sock in (root / host / "var" / "worker" / "ssh").glob("*"):
                subprocess.run(["runuser", "-u", user, "--", "ssh", "-o",
                                f"ControlPath={sock}", "-O", "exit", "pi"],
                               capture_output=True, timeout=30)
        print(f"field test teardown: ssh masters {time.monotonic() - down:.1f} s")
        for user in f.users:
            remove_user(user)
        print(f"field test teardown: users {time.monotonic() - down:.1f} s")
        shutil.rmtree(root, ignore_errors=True)
        print(f"field test teardown: {time.monotonic() - down:.1f} s")


def parallel(*jobs) -> list:
    """Run the callables at once (separate machines do not wait for each other);
    re-raise the first failure."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=500)
    if errors:
        raise errors[0]
    return results


def test_the_guide_sets_up_a_fleet_that_trains(fleet_field: Field) -> None:
    f = fleet_field
    started = time.monotonic()
    build_wheels(f)
    f.timings["wheels"] = round(time.monotonic() - started, 1)
    wheel = next((f.root / "dist").glob("trainledger-*.whl"))
    start_sshd(f)
    host_key = f.root / "sshd" / "host_key.pub"

    pi = f.root / "pi"
    pi_env = {"TL_PREFIX": str(pi / "opt"), "TL_HOOKS": str(pi / "etc" / "hooks"),
              "TL_STATE_DIR": str(pi / "var" / "reconciler"), "TL_UNIT_DIR": str(pi / "units")}
    downloads = pi / "downloads"
    downloads.mkdir(parents=True)
    shutil.copy2(wheel, downloads)
    shutil.copy2(f.root / "src" / "scripts" / "install-reconciler.sh", downloads)
    laptop = f.root / "laptop" / "home"

    def host_env(name: str) -> dict[str, str]:
        base = f.root / name
        return {"TL_NAME": name, "TL_WORKER_USER": HOSTS[name], "TL_PREFIX": str(base / "opt"),
                "TL_STATE_DIR": str(base / "var" / "worker"),
                "TL_UNIT_DIR": str(base / "units"), "TL_EXTRAS": "xgboost"}

    def install_host(name: str) -> str:
        """§3 on the host: the install script, as root, from its download dir."""
        base = f.root / name
        add_user(HOSTS[name], base / "home")
        pin_pi(f, HOSTS[name], host_key)
        dl = base / "downloads"
        dl.mkdir()
        shutil.copy2(wheel, dl)
        shutil.copy2(f.root / "src" / "scripts" / "install-worker.sh", dl)
        return f.block("host-install", "root", dl, **host_env(name))

    def install_laptop() -> str:
        """§2 on the laptop: the operator's own venv and key."""
        add_user(OPERATOR, laptop)
        pin_pi(f, OPERATOR, host_key)
        shutil.copy2(wheel, laptop)
        return f.block("laptop-install", OPERATOR, laptop)

    # --- §1 the Pi, §2 the laptop, §3 two hosts: four machines set up at once
    first, _laptop, *hosts = parallel(
        lambda: f.block("pi-install", "root", downloads, **pi_env), install_laptop,
        *(lambda name=name: install_host(name) for name in HOSTS))
    assert f"created system user {PI_USER}" in first and "created ledger" in first
    for out in hosts:
        assert "created key" in out and "== capability of" in out
    hook = pi / "etc" / "hooks" / "pre-receive"
    assert hook.stat().st_uid == 0 and not (f.ledger / "hooks" / "pre-receive").exists()
    assert "reconciler.hook" in hook.read_text()
    # the plain (non-editable) install found its template and hooks in the wheel
    where = f.as_user(PI_USER, str(pi / "opt" / "bin" / "python"), "-c",
                      "from reconciler.rules.resources import resource_dir as r; "
                      "print(r('ledger-template'), r('hooks'))").stdout.split()
    assert all(str(pi / "opt") in w and "/site-packages/reconciler/_data/" in w for w in where)
    installed = f.as_user(PI_USER, str(pi / "opt" / "bin" / "python"), "-m", "pip", "list",
                          "--format=json").stdout
    assert not {"torch", "xgboost-cpu", "numpy"} & {p["name"] for p in json.loads(installed)}
    f.start_unit(pi / "units" / "trainledger-reconciler.service")
    f.wait("the reconciler's first pass",
           lambda: ((f.status().get("reconciler") or {}).get("report") or {}).get("passes"))

    # --- §2 the first operator: enrolled and given the role on the Pi
    f.as_user(OPERATOR, "git", "config", "--global", "user.name", "Alice Smith")
    f.as_user(OPERATOR, "git", "config", "--global", "user.email", "alice@example.org")
    shutil.copy2(laptop / ".ssh" / "trainledger.pub", downloads / "alice.pub")
    f.block("pi-operator", "root", downloads, **pi_env)

    # --- §5 the operator's first manifest, from the laptop over ssh
    (f.root / "jobs.toml").write_text(JOBS_TOML)
    editor = f.root / "bin" / "edit-manifest"
    editor.write_text(f"#!/bin/sh\nsed -i '/^\\[\\[jobs\\]\\]/,$d' \"$1\"\n"
                      f"cat {f.root / 'jobs.toml'} >> \"$1\"\n")
    editor.chmod(0o755)
    f.block("laptop-edit", OPERATOR, laptop, pre=("laptop-env",), EDITOR=str(editor))
    f.wait("the new jobs' state files",
           lambda: {"gbt-a", "gbt-b", "gbt-c", "gbt-d"} <= set(f.jobs()))

    # --- §6 a cancel by hand, committed under the operator's own name
    f.block("laptop-cancel-by-hand", OPERATOR, laptop, pre=("laptop-env",), JOB="gbt-d")
    assert f.jobs()["gbt-d"] == "cancelled"

    # --- §3 the hosts' keys enrolled on the Pi, their workers started
    for name in HOSTS:
        shutil.copy2(f.root / name / "home" / ".ssh" / "trainledger.pub",
                     downloads / f"{name}.pub")
        f.block("pi-enroll", "root", downloads, TL_NAME=name, **pi_env)
    # w1 as systemd would run its unit; w2 through the launcher a host without
    # systemd uses (WSL2's Scheduled Task runs it)
    f.start_unit(f.root / "w1" / "units" / "trainledger-worker.service")
    f.start_launcher(f.root / "w2" / "opt" / "bin" / "trainledger-worker-start", HOSTS["w2"])

    # a second run of each install script changes nothing (run while the fleet
    # trains, as an upgrade would: the hook is replaced atomically)
    again, host_again = parallel(
        lambda: f.block("pi-install", "root", downloads, **pi_env),
        lambda: f.block("host-install", "root", f.root / "w1" / "downloads", **host_env("w1")))
    for out in (again, host_again):
        changed = [ln for ln in out.splitlines()
                   if re.search(r": (created|installed|wrote|set|removed) ", ln)]
        assert not changed, f"a second run of an install script changed things: {changed}"
    f.wait("gbt-a, gbt-b and gbt-c trained",
           lambda: (j := f.jobs()) and all(j[n] == "completed" for n in ("gbt-a", "gbt-b",
                                                                          "gbt-c")) and j)
    assert f.jobs()["gbt-d"] == "cancelled", "the hand-made cancel was undone"
    for name, user in HOSTS.items():
        log = (f.root / f"trainledger-worker-{user}.log").read_text()
        assert f"artifacts go to ssh://{PI_USER}@pi{f.pi_home}/store (over ssh)" in log, log
        trained = {"w1": "gbt-a", "w2": "gbt-b"}[name]
        assert re.search(rf"event=complete job={trained}\b", log), log

    # --- §6 requeue by command, §8 fetch the artifact on the laptop
    f.block("laptop-requeue", OPERATOR, laptop, pre=("laptop-env",), JOB="gbt-d")
    f.wait("gbt-d trained after its requeue", lambda: f.jobs()["gbt-d"] == "completed")
    fetched = f.block("laptop-fetch", OPERATOR, laptop, pre=("laptop-env",), JOB="gbt-d")
    assert "(over ssh)" in fetched
    metrics = json.loads((laptop / "gbt-d" / "metrics.json").read_text())
    assert metrics, "an empty metrics.json"

    # the laptop's install has no training extras: `worker run` works there too
    idle = f.script("worker run --name alice --exit-when-idle --poll-s 0.5\n", OPERATOR, laptop,
                    pre=("laptop-env",), label="worker run without extras")
    assert "event=worker-start worker=alice" in idle, idle

    # --- fsck on the Pi (Repair)
    fsck = f.block("pi-fsck", "root", downloads, **pi_env)
    # four completed jobs: each its artifact and its last attempt's log bundle
    assert "8 referenced; missing 0, corrupt 0" in fsck and "git fsck: ok" in fsck, fsck

    # the reconciler never wedged: it applied every later operator commit
    report = f.status()["reconciler"]["report"]
    assert report["passes"] > 1 and not report.get("last_error") \
        and not report.get("refused") and not report.get("findings"), report
    log = f.as_user(PI_USER, "git", "-C", str(f.ledger), "log", "--format=%an|%s", "main").stdout
    assert "Alice Smith|cancel gbt-d by hand" in log
    assert "|restore " not in log
    f.timings["total"] = round(time.monotonic() - started, 1)
