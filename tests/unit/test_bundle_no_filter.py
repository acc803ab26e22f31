"""Unpacking on a Python without tarfile's extraction filters (3.11.0-3.11.3, as
Debian 12 and the Pi ship): same files, same refusals (the field test found it)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from reconciler.protocol.errors import BundleError
from reconciler.store import bundle, unpack


@pytest.fixture(params=[True, False], ids=["data-filter", "by-hand"])
def filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(unpack, "HAS_DATA_FILTER", request.param)
    return request.param


def test_unpack_writes_the_same_files_either_way(tmp_path: Path, filters: bool) -> None:
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "metrics.json").write_text('{"acc": 1}')
    (src / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (src / "sub" / "run.sh").chmod(0o4755)
    with (tmp_path / "b.tar.zst").open("wb") as out:
        bundle.pack(src, out)
    dest = tmp_path / "dest"
    unpack.unpack(tmp_path / "b.tar.zst", dest)
    assert (dest / "metrics.json").read_text() == '{"acc": 1}'
    mode = (dest / "sub" / "run.sh").stat().st_mode
    assert mode & 0o7000 == 0 and mode & 0o022 == 0  # no setuid, not writable by others


def test_a_link_is_still_refused_before_anything_is_written(tmp_path: Path,
                                                            filters: bool) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("evil")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    path = tmp_path / "evil.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    with pytest.raises(BundleError):
        unpack.unpack(path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())
