"""Checksummed downloads and the offline path, without the internet: file:// URLs and a patched urlopen."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import re
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jresnet.data import (
    ChecksumMismatchError,
    DatasetNotFoundError,
    DownloadError,
    cifar10,
    default_data_root,
    download,
    fetch_mnist,
    mnist,
)
from jresnet.data.download import (
    CIFAR10_SOURCE,
    CIFAR100_SOURCE,
    FASHION_MNIST_SOURCE,
    MNIST_SOURCE,
    OfficialSource,
    RemoteFile,
    fetch,
)

from .format_writers import idx_bytes, random_idx_split, write_cifar10_batches

cifar_module = importlib.import_module(
    "jresnet.data.cifar"
)  # the package re-exports functions by these names


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every urlopen fail as on a machine without network; return the URLs that were tried."""
    tried: list[str] = []

    def no_network(request: urllib.request.Request | str, *args: object, **kwargs: object) -> None:
        tried.append(request.full_url if isinstance(request, urllib.request.Request) else request)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tried


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A file standing in for a published download."""
    path = tmp_path / "server" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 100)
    return path


def test_download_verifies_and_writes_the_file(published: Path, tmp_path: Path) -> None:
    dest = tmp_path / "downloads" / "payload.bin"
    assert download(published.as_uri(), dest, sha256_of(published)) == dest
    assert dest.read_bytes() == published.read_bytes()
    assert list(dest.parent.iterdir()) == [dest]  # no .part left behind


def test_checksum_mismatch_deletes_the_download(published: Path, tmp_path: Path) -> None:
    dest = tmp_path / "downloads" / "payload.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as raised:
        download(published.as_uri(), dest, wrong)
    message = str(raised.value)
    assert wrong in message and sha256_of(published) in message and published.as_uri() in message
    assert isinstance(raised.value, ValueError)
    assert list(dest.parent.iterdir()) == []


def test_offline_download_names_the_url(offline: list[str], tmp_path: Path) -> None:
    with pytest.raises(
        DownloadError, match=r"could not download https://example.invalid/x.gz: .*name resolution"
    ):
        download("https://example.invalid/x.gz", tmp_path / "x.gz", "0" * 64)
    assert isinstance(DownloadError("x"), OSError)
    assert not (tmp_path / "x.gz").exists() and not (tmp_path / "x.gz.part").exists()


def test_a_refused_connection_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # find a local port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        download(f"http://127.0.0.1:{port}/mnist.gz", tmp_path / "mnist.gz", "0" * 64, timeout=5.0)


def test_missing_file_url_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        download((tmp_path / "absent").as_uri(), tmp_path / "out", "0" * 64)


def test_loading_with_download_offline_says_where_to_put_the_files(
    offline: list[str], tmp_path: Path
) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        mnist(tmp_path / "mnist", download=True)
    message = str(raised.value)
    assert "\n" not in message
    for expected in ("train-images-idx3-ubyte", str(tmp_path / "mnist"), MNIST_SOURCE.files[0].mirrors[0]):
        assert expected in message
    assert "download failed" in message and "name resolution" in message
    assert offline[: len(MNIST_SOURCE.files[0].urls)] == list(
        MNIST_SOURCE.files[0].urls
    )  # every mirror tried


def test_download_is_off_by_default(offline: list[str], tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        mnist(tmp_path)
    with pytest.raises(DatasetNotFoundError):
        cifar10(tmp_path)
    assert offline == []


def local_source(tmp_path: Path, files: dict[str, bytes], *, archive: bool = False) -> OfficialSource:
    """An OfficialSource whose first mirror is dead and whose second serves ``files`` from disk."""
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    for name, data in files.items():
        (server / name).write_bytes(data)
    mirrors = ((tmp_path / "dead-mirror").as_uri() + "/", server.as_uri() + "/")
    remote = tuple(
        RemoteFile(name, hashlib.sha256(data).hexdigest(), mirrors) for name, data in files.items()
    )
    return OfficialSource("Local", "local", "the local files", remote, archive=archive)


def test_fetch_falls_back_to_the_next_mirror_and_the_files_load(tmp_path: Path) -> None:
    images, labels = random_idx_split(np.random.default_rng(0), 4)
    source = local_source(
        tmp_path, {"train-images-idx3-ubyte": idx_bytes(images), "train-labels-idx1-ubyte": idx_bytes(labels)}
    )
    folder = fetch(source, tmp_path / "dataset")
    assert np.array_equal(mnist(folder)["train"].images[:, 0], images)


def test_fetch_keeps_files_that_are_already_there(tmp_path: Path, offline: list[str]) -> None:
    source = local_source(tmp_path, {"a.bin": b"published"})
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "a.bin").write_bytes(b"put there by hand")
    fetch(source, tmp_path / "dataset")
    assert offline == [] and (tmp_path / "dataset" / "a.bin").read_bytes() == b"put there by hand"


def test_fetch_with_a_bad_checksum_everywhere_is_not_found_with_the_reason(tmp_path: Path) -> None:
    source = local_source(tmp_path, {"a.bin": b"published"})
    tampered = dataclasses.replace(source.files[0], sha256="f" * 64)
    with pytest.raises(
        DatasetNotFoundError, match=r"SHA-256 of the downloaded bytes is [0-9a-f]{64}, expected f{64}"
    ):
        fetch(dataclasses.replace(source, files=(tampered,)), tmp_path / "dataset")
    assert not (tmp_path / "dataset" / "a.bin").exists()


def test_cifar10_download_true_fetches_and_unpacks_the_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    write_cifar10_batches(staging / "cifar-10-batches-py", per_batch=2)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    source = local_source(tmp_path, {"cifar-10-python.tar.gz": tarball.read_bytes()}, archive=True)
    monkeypatch.setattr(cifar_module, "_CIFAR10", dataclasses.replace(cifar_module._CIFAR10, source=source))

    splits = cifar10(tmp_path / "root", download=True)

    assert len(splits["train"]) == 10 and len(splits["test"]) == 2
    assert (tmp_path / "root" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_default_data_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JRESNET_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("JRESNET_DATA_DIR")
    assert default_data_root() == Path.home() / ".cache" / "jresnet" / "datasets"


def test_fetch_function_downloads_into_the_default_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline: list[str]
) -> None:
    monkeypatch.setenv("JRESNET_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "mnist"))):
        fetch_mnist()


@pytest.mark.parametrize("source", [MNIST_SOURCE, FASHION_MNIST_SOURCE, CIFAR10_SOURCE, CIFAR100_SOURCE])
def test_published_checksums_are_full_sha256_and_urls_are_https_first(source: OfficialSource) -> None:
    for remote in source.files:
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256), remote.filename
        assert remote.urls[0].startswith("https://")
