"""The sha256 store on real files: layout, a put that never renames wrong bytes
into place, concurrent puts (threads and processes), planted symlinks, a full
disk (RLIMIT_FSIZE in a child), and SshStore through a fake `ssh` that runs the
forced command's serve_* functions locally."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from reconciler.protocol.errors import StoreError
from reconciler.protocol.state import Artifact
from reconciler.store.backends import open_store, pack_into
from reconciler.store.local import LocalStore
from reconciler.store.serve import serve_get, serve_has, serve_put
from reconciler.store.ssh import SshStore

DATA = b"bundle bytes; the store only cares that they hash to their name\n" * 1000
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() or p.is_symlink())


def final(root: Path, sha: str = SHA) -> str:
    return f"sha256/{sha[:2]}/{sha}.tar.zst"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def job_outputs(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "metrics.json").write_text('{"loss": 0.25}\n')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    return root


# ------------------------------------------------------------------ local


def test_put_has_open_verify_and_layout(store: LocalStore) -> None:
    assert not store.has(SHA) and not store.verify(SHA) and list(store.iter_shas()) == []
    assert store.put(SHA, io.BytesIO(DATA)) == Artifact(sha256=SHA, size=len(DATA))
    assert files(store.root) == [final(store.root)]
    assert store.location(SHA) == str(store.root / final(store.root))
    assert store.has(SHA) and store.verify(SHA) and list(store.iter_shas()) == [SHA]
    with store.open(SHA) as f:
        assert f.read() == DATA
    with pytest.raises(StoreError, match="no bundle"):
        store.open(OTHER)


def test_put_with_the_wrong_sha_never_appears(store: LocalStore) -> None:
    with pytest.raises(StoreError, match=f"hash to {SHA}, not {OTHER}: refused"):
        store.put(OTHER, io.BytesIO(DATA))
    assert files(store.root) == [] and not store.has(OTHER)


def test_a_present_bundle_is_not_rewritten_and_a_corrupt_one_is_healed(
        store: LocalStore) -> None:
    store.put(SHA, io.BytesIO(DATA))
    path = store.root / final(store.root)
    inode = path.stat().st_ino
    assert store.put(SHA, io.BytesIO(b"never read")) == Artifact(sha256=SHA, size=len(DATA))
    assert path.stat().st_ino == inode
    path.write_bytes(b"bit rot")
    assert store.has(SHA) and not store.verify(SHA)
    store.put(SHA, io.BytesIO(DATA))
    assert store.verify(SHA) and path.read_bytes() == DATA


def test_open_re_hashes_and_refuses_a_mismatch_at_eof(store: LocalStore) -> None:
    store.put(SHA, io.BytesIO(DATA))
    (store.root / final(store.root)).write_bytes(DATA[:-1] + b"?")
    with store.open(SHA) as f:
        assert len(f.read(1000)) == 1000  # bytes flow; the verdict comes at the end
        with pytest.raises(StoreError, match="does not re-hash to its name") as err:
            while f.read(1 << 16):
                pass
    assert err.value.mismatch is True


@pytest.mark.parametrize("bad", ["-oProxyCommand=sh", "../" + SHA[3:], SHA.upper(), SHA[:-1],
                                 SHA + "0", "", f"{SHA[:63]}\n"])
def test_every_entry_point_refuses_a_bad_sha(store: LocalStore, bad: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for call in (lambda: store.put(bad, io.BytesIO(DATA)), lambda: store.has(bad),
                 lambda: store.open(bad), lambda: store.verify(bad),
                 lambda: store.location(bad)):
        with pytest.raises(StoreError, match="not a sha256"):
            call()
    assert serve_put(store.root, bad, io.BytesIO(DATA)) == 1
    assert serve_get(store.root, bad, io.BytesIO()) == 2
    assert serve_has(store.root, bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "not a sha256" in err
    assert not store.root.exists() or files(store.root) == []


def test_concurrent_puts_of_one_sha_in_threads(store: LocalStore) -> None:
    data = os.urandom(3 << 20)
    sha = hashlib.sha256(data).hexdigest()
    barrier = threading.Barrier(8)
    results: list[object] = []

    def put() -> None:
        barrier.wait()
        try:
            results.append(store.put(sha, io.BytesIO(data)))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [Artifact(sha256=sha, size=len(data))] * 8
    assert files(store.root) == [final(store.root, sha)] and store.verify(sha)


CHILD_PUT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from reconciler.store.local import LocalStore
    store = LocalStore(Path(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()  # the barrier: every child is imported and waiting
    print(store.put_file(Path(sys.argv[2])).sha256, flush=True)
""")


def test_concurrent_puts_of_one_sha_in_processes(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(4 << 20)
    sha = hashlib.sha256(data).hexdigest()
    src = tmp_path / "bundle.tar.zst"
    src.write_bytes(data)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_PUT, str(store.root), str(src)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    assert {o.strip() for o, _ in outs} == {sha}
    assert files(store.root) == [final(store.root, sha)] and store.verify(sha)


@pytest.mark.parametrize("where", ["sha256", "aa", "file", "fifo"])
def test_a_planted_symlink_or_special_file_is_refused(store: LocalStore, tmp_path: Path,
                                                      where: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the store's")
    base = store.root / "sha256"
    base.mkdir(parents=True)
    if where == "sha256":
        base.rmdir()
        base.symlink_to(outside)
    elif where == "aa":
        (base / SHA[:2]).symlink_to(outside)
    elif where == "file":
        (base / SHA[:2]).mkdir()
        (base / SHA[:2] / f"{SHA}.tar.zst").symlink_to(outside / "secret")
    else:
        (base / SHA[:2]).mkdir()
        os.mkfifo(base / SHA[:2] / f"{SHA}.tar.zst")
    words = "not a regular file" if where == "fifo" else "is a symlink"
    for call in (lambda: store.put(SHA, io.BytesIO(DATA)), lambda: store.has(SHA),
                 lambda: store.open(SHA), lambda: store.verify(SHA)):
        with pytest.raises(StoreError, match=words):
            call()
    assert files(outside) == ["secret"] and (outside / "secret").read_text() == "not the store's"
    assert serve_has(store.root, SHA) == 2


def test_a_store_root_that_is_a_symlink_is_the_operators_choice(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    LocalStore(tmp_path / "link").put(SHA, io.BytesIO(DATA))
    assert files(tmp_path / "real") == [final(tmp_path / "real")]


CHILD_FULL = textwrap.dedent("""
    import io, os, resource, sys
    from pathlib import Path
    from reconciler.protocol.errors import StoreError
    from reconciler.store.backends import pack_into
    from reconciler.store.local import LocalStore
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))
    store = LocalStore(Path(sys.argv[1]))
    data = os.urandom(1 << 20)
    import hashlib
    for what, put in [
        ("put", lambda: store.put(hashlib.sha256(data).hexdigest(), io.BytesIO(data))),
        ("pack", lambda: pack_into(store, Path(sys.argv[2]), Path(sys.argv[3]))),
    ]:
        try:
            put()
            print(what, "stored?!")
        except StoreError as exc:
            print(what, exc)
""")


def test_a_full_disk_is_a_clear_store_error_and_leaves_no_temp_file(
        store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "out"
    src.mkdir()
    (src / "noise.bin").write_bytes(os.urandom(1 << 20))
    proc = subprocess.run([sys.executable, "-c", CHILD_FULL, str(store.root), str(src),
                           str(tmp_path / "tmp")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["put", "pack"], lines
    for line in lines:
        assert "File too large" in line and "[EFBIG]" in line and str(store.root) in line, line
    assert files(store.root) == []


def test_pack_into_a_local_store_writes_once_and_dedupes(store: LocalStore,
                                                         tmp_path: Path) -> None:
    src = job_outputs(tmp_path / "out")
    first = pack_into(store, src, tmp_path / "tmp")
    again = pack_into(store, src, tmp_path / "tmp")
    assert first == again and store.verify(first.sha256)
    assert files(store.root) == [final(store.root, first.sha256)]


def test_open_store_picks_the_kind_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "s"), tmp_path), LocalStore)
    local = open_store(f"file://{tmp_path}/s", tmp_path)
    assert isinstance(local, LocalStore) and local.root == tmp_path / "s"
    assert isinstance(open_store(f"file://localhost{tmp_path}/s", tmp_path), LocalStore)
    remote = open_store("ssh://pi@office-pi:2222/var/lib/store", tmp_path)
    assert isinstance(remote, SshStore) and remote.argv[-3:] == ["-p", "2222", "pi@office-pi"]
    # scp-style is ssh, as git reads it: never a local directory named "office-pi:"
    scp = open_store("pi@office-pi:/var/lib/store", tmp_path)
    assert isinstance(scp, SshStore) and scp.argv[-1] == "pi@office-pi"
    for bad in ["", "http://x/y", "file://other-host/s", "-oProxyCommand=sh:/x",
                "ssh://-oProxyCommand=sh/x", "ssh://pi@host:99999/x", "ssh://", "nohost:"]:
        with pytest.raises(StoreError):
            open_store(bad, tmp_path)


# ------------------------------------------------------------------ over "ssh"

FAKE_SSH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from reconciler.store import serve
    root, log, *argv = sys.argv[1:]
    with open(log, "a") as f:
        f.write(" ".join(argv) + "\\n")
    command, sha = argv[-2:]
    if command == "store-put":
        sys.exit(serve.serve_put(Path(root), sha, sys.stdin.buffer))
    if command == "store-get":
        sys.exit(serve.serve_get(Path(root), sha, sys.stdout.buffer))
    if command == "store-has":
        sys.exit(serve.serve_has(Path(root), sha))
    print("trainledger-shell: not allowed", file=sys.stderr)
    sys.exit(1)
""")


@pytest.fixture
def remote(tmp_path: Path) -> tuple[SshStore, LocalStore, Path]:
    """An SshStore whose `ssh` is a local script playing the Pi's forced command."""
    pi = LocalStore(tmp_path / "pi-store")
    log = tmp_path / "ssh.log"
    ssh = SshStore("ssh://worker@office-pi/var/lib/trainledger/store", tmp_path / "state",
                   ssh_argv=[sys.executable, "-c", FAKE_SSH, str(pi.root), str(log)])
    return ssh, pi, log


def test_ssh_store_puts_gets_and_checks_through_the_forced_command(
        remote: tuple[SshStore, LocalStore, Path]) -> None:
    ssh, pi, log = remote
    assert not ssh.has(SHA)
    assert ssh.put(SHA, io.BytesIO(DATA)) == Artifact(sha256=SHA, size=len(DATA))
    assert ssh.has(SHA) and pi.verify(SHA) and ssh.verify(SHA)
    with ssh.open(SHA) as f:
        assert f.read() == DATA
    assert ssh.location(SHA) == f"ssh://worker@office-pi/var/lib/trainledger/store/{final(pi.root)}"
    calls = log.read_text().splitlines()
    assert [c.split()[-2] for c in calls] == ["store-has", "store-put", "store-has",
                                              "store-has", "store-get", "store-get"]
    assert all("ControlMaster=auto" in c and " worker@office-pi store-" in c for c in calls)


def test_ssh_store_refuses_wrong_bytes_missing_and_corrupt_bundles(
        remote: tuple[SshStore, LocalStore, Path]) -> None:
    ssh, pi, _ = remote
    with pytest.raises(StoreError, match=f"store-put {OTHER[:12]}: store-put: .*refused"):
        ssh.put(OTHER, io.BytesIO(DATA))
    assert files(pi.root) == []
    with pytest.raises(StoreError, match=f"store-get: no bundle {SHA}"), ssh.open(SHA) as f:
        f.read()
    pi.put(SHA, io.BytesIO(DATA))
    (pi.root / final(pi.root)).write_bytes(DATA[:-1] + b"?")
    with pytest.raises(StoreError, match="does not re-hash"), ssh.open(SHA) as f:
        f.read()
    assert not ssh.verify(SHA)
    with pytest.raises(StoreError, match="not supported"):
        list(ssh.iter_shas())


def test_ssh_store_put_of_a_present_bundle_succeeds_without_sending_it(
        remote: tuple[SshStore, LocalStore, Path]) -> None:
    ssh, pi, _ = remote
    big = os.urandom(4 << 20)  # more than a pipe holds: the remote stops reading early
    sha = hashlib.sha256(big).hexdigest()
    pi.put(sha, io.BytesIO(big))
    assert ssh.put(sha, io.BytesIO(big)) == Artifact(sha256=sha, size=len(big))


def test_pack_into_an_ssh_store_leaves_no_temp_file(
        remote: tuple[SshStore, LocalStore, Path], tmp_path: Path) -> None:
    ssh, pi, _ = remote
    art = pack_into(ssh, job_outputs(tmp_path / "out"), tmp_path / "tmp")
    assert pi.verify(art.sha256) and files(pi.root) == [final(pi.root, art.sha256)]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ssh_failure_is_a_store_error_naming_the_url(tmp_path: Path) -> None:
    broken = SshStore("ssh://nowhere/store", tmp_path / "state", ssh_argv=[
        sys.executable, "-c", "import sys; print('ssh: connect: refused', file=sys.stderr); "
        "sys.exit(255)"])
    for call in (lambda: broken.has(SHA), lambda: broken.put(SHA, io.BytesIO(DATA))):
        with pytest.raises(StoreError, match=r"ssh://nowhere/store: store-.*connect: refused"):
            call()
