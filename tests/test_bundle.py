import pytest

from edgekit.bundle import file_inventory, sha256_file, staged_bundle
from edgekit.errors import UserError


def test_bundle_moves_into_place_only_on_success(tmp_path):
    target = tmp_path / "out" / "dev"
    with staged_bundle(target, force=False) as staging:
        (staging / "a.txt").write_text("hello")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["dev"]


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "dev"
    with pytest.raises(RuntimeError), staged_bundle(target, force=False) as staging:
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force_and_force_replaces(tmp_path):
    target = tmp_path / "dev"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(UserError, match="--force"), staged_bundle(target, force=False):
        pass
    assert (target / "old.txt").exists()
    with staged_bundle(target, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev"]


def test_inventory_hashes_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bin").write_bytes(b"abc")
    (tmp_path / "manifest.json").write_text("{}")
    inv = file_inventory(tmp_path)
    assert inv == [{"path": "sub/x.bin", "bytes": 3, "sha256": sha256_file(tmp_path / "sub" / "x.bin")}]
    assert inv[0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
