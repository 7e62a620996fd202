"""Signed packages: building, signing an optimizer-style directory, and rejecting every kind of tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workbench.deploy._examples import tiny_model
from workbench.errors import ConfigError, PackageError, SignatureError
from workbench.protocol.keys import SigningKey, enroll, init_keys, load_trusted_keys
from workbench.protocol.package import build_package, load_package, sign_package, verify_package


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return init_keys(tmp_path / "keys")


@pytest.fixture
def trusted(key: SigningKey) -> dict:
    return {key.key_id: key.private_key.public_key()}


@pytest.fixture
def package_dir(tmp_path: Path, key: SigningKey) -> Path:
    return build_package(tiny_model(tmp_path / "tiny.onnx"), tmp_path / "pkg", key, slo_ms=100).path


def test_build_package_lists_every_file_hash_when_model_wrapped(package_dir: Path, trusted: dict) -> None:
    package = verify_package(package_dir, trusted)
    assert set(package.files) == {"model.onnx", "sample_input.npz", "expected_output.npz"}
    assert package.manifest["inputs"][0]["name"] == "x"
    assert package.manifest["requirements"]["opset"] == 17
    assert package.health["slo_ms"] == 100
    feeds, expected = package.sample()
    assert feeds["x"].shape[1] == 16 and expected[0].shape[1] == 4


def test_sign_package_keeps_optimizer_fields_when_directory_has_manifest(tmp_path: Path, key: SigningKey,
                                                                          trusted: dict) -> None:
    folder = tmp_path / "digits-int8"
    folder.mkdir()
    tiny_model(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps({"recipe": ["int8"], "metrics": {"accuracy": 0.97},
                                                      "target": "raspberry-pi-5"}))
    package = sign_package(folder, key)
    assert verify_package(folder, trusted).id == package.id
    assert package.manifest["recipe"] == ["int8"]
    assert package.manifest["metrics"] == {"accuracy": 0.97}
    assert package.manifest["target"] == "raspberry-pi-5"


@pytest.mark.parametrize("name", ["model.onnx", "sample_input.npz", "expected_output.npz", "manifest.json"])
def test_verify_rejects_package_when_one_byte_is_flipped(package_dir: Path, trusted: dict, name: str) -> None:
    path = package_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"sha256|signature|JSON"):
        verify_package(package_dir, trusted)


def test_verify_rejects_package_when_model_is_truncated(package_dir: Path, trusted: dict) -> None:
    model = package_dir / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(PackageError, match="truncated"):
        verify_package(package_dir, trusted)


def test_verify_rejects_package_when_signed_by_unknown_key(package_dir: Path, tmp_path: Path) -> None:
    other = init_keys(tmp_path / "other")
    with pytest.raises(SignatureError, match="not trusted"):
        verify_package(package_dir, {other.key_id: other.private_key.public_key()})


def test_verify_rejects_package_when_manifest_points_to_missing_file(tmp_path: Path, key: SigningKey,
                                                                     trusted: dict) -> None:
    folder = tmp_path / "pkg2"
    folder.mkdir()
    tiny_model(folder / "model.onnx")
    (folder / "extra.txt").write_text("labels")
    sign_package(folder, key)
    (folder / "extra.txt").unlink()
    with pytest.raises(PackageError, match="missing"):
        verify_package(folder, trusted)


def test_verify_rejects_package_when_signature_is_missing(package_dir: Path, trusted: dict) -> None:
    (package_dir / "signature.json").unlink()
    with pytest.raises(SignatureError, match="not signed"):
        verify_package(package_dir, trusted)


def test_resigning_with_other_key_is_rejected_when_device_trusts_only_first(package_dir: Path, tmp_path: Path,
                                                                            trusted: dict) -> None:
    attacker = init_keys(tmp_path / "attacker")
    sign_package(package_dir, attacker)
    with pytest.raises(SignatureError, match="not trusted"):
        verify_package(package_dir, trusted)


def test_build_package_refuses_when_output_dir_not_empty(tmp_path: Path, key: SigningKey, package_dir: Path) -> None:
    with pytest.raises(PackageError, match="not empty"):
        build_package(tiny_model(tmp_path / "t2.onnx"), package_dir, key)


def test_build_package_leaves_nothing_when_model_is_invalid(tmp_path: Path, key: SigningKey) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(PackageError, match="cannot load"):
        build_package(bad, tmp_path / "out", key)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging*"))


def test_init_keys_refuses_to_overwrite_when_key_exists(key: SigningKey) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        init_keys(key.directory)


def test_enroll_makes_key_trusted_when_copied(key: SigningKey, tmp_path: Path, package_dir: Path) -> None:
    trust_dir = tmp_path / "device" / "trusted_keys"
    enroll(key.public_file, trust_dir)
    assert list(load_trusted_keys(trust_dir)) == [key.key_id]
    assert verify_package(package_dir, load_trusted_keys(trust_dir)).name == "tiny"


def test_load_package_raises_when_directory_is_not_a_package(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path / "nope", ignore_errors=True)
    (tmp_path / "nope").mkdir()
    with pytest.raises(PackageError, match=r"no manifest\.json"):
        load_package(tmp_path / "nope")
