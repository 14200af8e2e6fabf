"""Object store: a real S3 server (nanio, signature checks, data on disk) on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

pytest.importorskip("minio", reason="object-store support needs the minio package")
pytest.importorskip("nanio", reason="the S3 test server is the nanio package (pip install nanio)")

from _s3server import ACCESS_KEY, SECRET_KEY, CuttingProxy, nanio_server, s3_env  # noqa: E402

from autocompress import storage  # noqa: E402
from autocompress.errors import StorageError  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("nanio-data")
    with nanio_server(data) as endpoint:
        yield endpoint, data


def _settings(endpoint, access=ACCESS_KEY, secret=SECRET_KEY):
    host = endpoint.split("://", 1)[1]
    return storage.StorageSettings(endpoint=host, secure=False, access_key=access, secret_key=secret)


def _store(endpoint, **kw):
    sleeps = []
    kw.setdefault("sleep", sleeps.append)
    s = storage.ObjectStore(_settings(endpoint), **kw)
    s.sleeps = sleeps
    return s


@pytest.fixture(scope="module")
def bucket(server):
    endpoint, _ = server
    store = _store(endpoint)
    store.client.make_bucket("models")
    return "models"


def _blob(path: Path, size: int, seed: int = 0) -> Path:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_file_roundtrip_stores_and_checks_sha256(server, bucket, tmp_path):
    store = _store(server[0])
    src = _blob(tmp_path / "a.pdiparams", 300_000)
    [uri] = store.upload(src, f"s3://{bucket}/run1/a.pdiparams")
    stat = store.client.stat_object(bucket, "run1/a.pdiparams")
    assert storage._meta(stat.metadata, "sha256") == _sha(src)
    out = store.download(uri, tmp_path / "out" / "a.pdiparams")
    assert _sha(out) == _sha(src)
    assert not list((tmp_path / "out").glob("*.part"))


def test_folder_roundtrip_and_fetch_from_env(server, bucket, tmp_path, monkeypatch):
    src = tmp_path / "model"
    _blob(src / "inference.pdmodel", 1000, 1)
    _blob(src / "inference.pdiparams", 5000, 2)
    (src / "sub").mkdir()
    (src / "sub" / "note.txt").write_text("hello")
    uris = _store(server[0]).upload(src, f"minio://{bucket}/folders/m1")
    assert len(uris) == 3
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    for k, v in s3_env(server[0]).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    got = storage.fetch(f"minio://{bucket}/folders/m1")
    assert got.is_relative_to(tmp_path / "cache")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "inference.pdiparams", "inference.pdmodel", "sub/note.txt"]
    assert _sha(got / "inference.pdiparams") == _sha(src / "inference.pdiparams")
    # publish() to the store and a single-object fetch into an explicit folder
    storage.publish(src / "sub" / "note.txt", f"s3://{bucket}/single/note.txt")
    one = storage.fetch(f"s3://{bucket}/single/note.txt", tmp_path / "one")
    assert (one / "note.txt").read_text() == "hello"


def test_multipart_upload_for_large_files(server, bucket, tmp_path):
    store = _store(server[0], part_size=storage.MIN_PART_SIZE)
    src = _blob(tmp_path / "big.bin", 2 * storage.MIN_PART_SIZE + 12345, 3)
    store.upload(src, f"s3://{bucket}/big/big.bin")
    stat = store.client.stat_object(bucket, "big/big.bin")
    assert stat.etag.endswith("-3"), f"expected a 3-part multipart ETag, got {stat.etag}"
    assert storage._meta(stat.metadata, "sha256") == _sha(src)
    assert _sha(store.download(f"s3://{bucket}/big/big.bin", tmp_path / "big.out")) == _sha(src)


def test_missing_bucket_and_key_are_clear_errors(server, bucket, tmp_path):
    store = _store(server[0])
    with pytest.raises(StorageError, match="bucket 'nope-bucket' does not exist"):
        store.download("s3://nope-bucket/x/y.bin", tmp_path / "y")
    with pytest.raises(StorageError, match="no object and no folder"):
        store.download(f"s3://{bucket}/does/not/exist.bin", tmp_path / "y")
    with pytest.raises(StorageError, match="bucket 'nope-bucket' does not exist"):
        store.upload(_blob(tmp_path / "z", 10), "s3://nope-bucket/z")
    assert store.sleeps == []  # permanent errors are not retried


def test_wrong_credentials_name_the_fix_and_hide_the_secret(server, bucket, tmp_path):
    wrong = storage.ObjectStore(_settings(server[0], secret="definitely-wrong-secret"), sleep=lambda s: None)
    with pytest.raises(StorageError) as info:
        wrong.download(f"s3://{bucket}/run1/a.pdiparams", tmp_path / "a")
    text = str(info.value)
    assert "rejected the credentials" in text and "AWS_SECRET_ACCESS_KEY" in text
    assert "definitely-wrong-secret" not in text and SECRET_KEY not in text
    unknown = storage.ObjectStore(_settings(server[0], access="nobody"), sleep=lambda s: None)
    with pytest.raises(StorageError, match="rejected the credentials"):
        unknown.upload(_blob(tmp_path / "u", 10), f"s3://{bucket}/u")
    assert "definitely-wrong-secret" not in repr(wrong.settings)


@pytest.mark.parametrize("direction", ["down", "up"])
def test_interrupted_transfer_is_retried(server, bucket, tmp_path, direction):
    upstream_port = int(server[0].rsplit(":", 1)[1])
    src = _blob(tmp_path / "w.bin", 1_500_000, 4)
    if direction == "down":
        _store(server[0]).upload(src, f"s3://{bucket}/cut/w.bin")
    proxy = CuttingProxy(upstream_port, cut_after=200_000, direction=direction)
    try:
        store = storage.ObjectStore(_settings(proxy.endpoint), sleep=lambda s: None)
        if direction == "down":
            out = store.download(f"s3://{bucket}/cut/w.bin", tmp_path / "w.out")
            assert _sha(out) == _sha(src)
            assert not list(tmp_path.glob(".w.out.*"))  # the cut attempt left no partial file
        else:
            store.upload(src, f"s3://{bucket}/cut/up.bin")
            stat = store.client.stat_object(bucket, "cut/up.bin")
            assert stat.size == src.stat().st_size
        assert proxy.cut_count == 1, "the proxy never cut the transfer: the test proved nothing"
    finally:
        proxy.close()


def test_corrupted_object_fails_checksum_after_retries(server, bucket, tmp_path):
    endpoint, data_dir = server
    store = _store(endpoint, retries=2)
    src = _blob(tmp_path / "c.bin", 4096, 5)
    store.upload(src, f"s3://{bucket}/corrupt/c.bin")
    on_disk = data_dir / bucket / "corrupt" / "c.bin"
    assert on_disk.exists(), f"nanio layout changed: {sorted(p for p in data_dir.rglob('*'))[:10]}"
    raw = bytearray(on_disk.read_bytes())
    raw[100] ^= 0xFF
    on_disk.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="sha256 mismatch"):
        store.download(f"s3://{bucket}/corrupt/c.bin", tmp_path / "c.out")
    assert len(store.sleeps) == 2 and store.sleeps[1] > store.sleeps[0]  # exponential backoff
    assert not (tmp_path / "c.out").exists()


def test_settings_from_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("AWS_", "S3_", "MINIO_")):
            monkeypatch.delenv(k)
    s = storage.StorageSettings.from_env("minio")
    assert (s.endpoint, s.secure, s.access_key) == (storage.KFP_MINIO_ENDPOINT, False, None)
    assert storage.StorageSettings.from_env("s3").endpoint == "s3.amazonaws.com"
    monkeypatch.setenv("MINIO_ENDPOINT", "minio.local:9000")
    monkeypatch.setenv("MINIO_SECURE", "true")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "ak")
    monkeypatch.setenv("MINIO_SECRET_KEY", "sk-secret")
    s = storage.StorageSettings.from_env("s3")
    assert (s.endpoint, s.secure, s.access_key, s.secret_key) == ("minio.local:9000", True, "ak", "sk-secret")
    assert "sk-secret" not in repr(s)
    monkeypatch.setenv("S3_ENDPOINT", "http://127.0.0.1:9000")
    assert storage.StorageSettings.from_env().secure is False
    monkeypatch.delenv("MINIO_SECRET_KEY")
    with pytest.raises(StorageError, match="set both"):
        storage.StorageSettings.from_env()


def test_uri_parsing_and_local_paths(tmp_path):
    assert storage.parse_uri("s3://bkt/k/x.bin") == storage.ObjectURI("s3", "bkt", "k/x.bin")
    assert storage.is_remote("minio://b/k") and not storage.is_remote("/tmp/x") and not storage.is_remote("gs://b")
    with pytest.raises(StorageError, match="'..'"):
        storage.parse_uri("s3://bkt/../etc")
    with pytest.raises(StorageError, match="no bucket"):
        storage.parse_uri("s3:///k")
    with pytest.raises(StorageError, match="not a valid bucket name"):
        storage.parse_uri("s3://ab/k")
    with pytest.raises(StorageError, match="outside the target"):
        storage._safe_join(tmp_path, "../evil", storage.parse_uri("s3://bkt/k"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    assert storage.fetch(str(tmp_path / "d")) == tmp_path / "d"
    assert (storage.fetch(str(tmp_path / "d"), tmp_path / "copy") / "f").read_text() == "x"
    with pytest.raises(StorageError, match="does not exist"):
        storage.fetch(str(tmp_path / "missing"))
