"""Suite-wide settings for the tests, and the bystander folder the fault tests check."""

import hashlib
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' models are tiny: one thread is fastest for them and does not thrash a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links not followed) -> sha256 of its bytes, or where its link points."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[rel] = "dir"
    return found


@pytest.fixture
def bystander(tmp_path):
    """A user's folder beside the work: checked unchanged after the test."""
    folder = tmp_path / "bystander"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "thesis.txt").write_text("years of work\n")
    (folder / "config.yaml").write_text("mine: true\n")
    (folder / "step_00000099").mkdir()
    (folder / "step_00000099" / "data.bin").write_bytes(os.urandom(64))
    (folder / ".tmp-mine").write_text("not albert_gpt's\n")
    before = digest(folder)
    yield folder
    assert digest(folder) == before, "a file outside run.out_dir changed"
