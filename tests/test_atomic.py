import os

import pytest

from phaze.atomic import atomic_path, write_text_atomic


def test_success_renames_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a" / "out.txt", "hello")
    finally:
        os.umask(old)
    out = tmp_path / "a" / "out.txt"
    assert out.read_text() == "hello"
    assert out.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path / "a") == ["out.txt"]


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.parquet") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
