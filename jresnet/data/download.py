"""Getting official dataset files onto disk: where they live, checksummed downloads, and the
one-line error that says where to put them by hand.

Every loader works offline. Downloading happens only when a caller passes ``download=True``; when the
files are missing and the download is off or fails, `DatasetNotFoundError` names the expected files,
the folder to put them in and the URL to get them from.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jresnet.data.errors import ChecksumMismatchError, DatasetNotFoundError, DownloadError

__all__ = [
    "CIFAR10_SOURCE",
    "CIFAR100_SOURCE",
    "DATA_DIR_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_SOURCE",
    "MNIST_SOURCE",
    "OfficialSource",
    "RemoteFile",
    "default_data_root",
    "download",
    "fetch",
    "fetch_cifar10",
    "fetch_cifar100",
    "fetch_fashion_mnist",
    "fetch_mnist",
    "locate_or_fetch",
]

DATA_DIR_ENV = "JRESNET_DATA_DIR"
"""Environment variable that overrides `default_data_root`."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four idx files (gzipped).

Debian re-compressed them, so the .gz files' checksums differ from the official ones; the decoded
data is the same 60,000 + 10,000 images.
"""

_CHUNK_BYTES = 1 << 20


def default_data_root() -> Path:
    """Folder under which each dataset gets its own sub-folder when a loader is called with ``root=None``.

    ``$JRESNET_DATA_DIR`` when set, else ``~/.cache/jresnet/datasets``.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "jresnet" / "datasets"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name on disk, its SHA-256, and the base URLs that serve it, best first."""

    filename: str
    sha256: str
    mirrors: tuple[str, ...]

    @property
    def urls(self) -> tuple[str, ...]:
        """The file's full URL at each mirror, in the order they are tried."""
        return tuple(mirror + self.filename for mirror in self.mirrors)


@dataclass(frozen=True)
class OfficialSource:
    """A dataset with an official download: its files, where a loader looks for them, and how to say so.

    Attributes:
        title: the dataset's usual name, for messages ("CIFAR-10").
        folder_name: its sub-folder of `default_data_root`, used when ``root`` is None.
        expected: what the loader reads, in words, for the not-found message.
        files: the published files.
        archive: the files are .tar.gz archives that `fetch` unpacks into the folder.
        system_folders: further folders searched when ``root`` is None (after the default one).
        hint: another way to get the files, appended to the not-found message.
    """

    title: str
    folder_name: str
    expected: str
    files: tuple[RemoteFile, ...]
    archive: bool = False
    system_folders: tuple[Path, ...] = field(default=())
    hint: str = ""

    def search_folders(self, root: str | Path | None) -> list[Path]:
        """Folders to look in, in order: just ``root`` when given, else the default folder and system ones."""
        if root is not None:
            return [Path(root).expanduser()]
        return [default_data_root() / self.folder_name, *self.system_folders]

    def not_found(self, folders: Sequence[Path], reason: str | None = None) -> DatasetNotFoundError:
        """Build the one-line error: what is expected, where to put it, and where to get it."""
        searched = " or ".join(str(folder) for folder in folders)
        target = folders[0]
        if self.archive:
            how = f"download {self.files[0].urls[0]} and unpack it into {target}"
        else:
            names = ", ".join(remote.filename for remote in self.files)
            how = f"download {names} from {self.files[0].mirrors[0]} into {target}"
        message = (
            f"{self.title} not found in {searched}: expected {self.expected}; {how}, or pass download=True"
        )
        if self.hint:
            message += f", or {self.hint}"
        if reason:
            message += f" (download failed: {reason})"
        return DatasetNotFoundError(" ".join(message.split()))  # one line, whatever the reason held


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256; return ``dest``.

    The bytes go to ``dest`` + ".part" first and are renamed only after the checksum matches, so a
    half-finished or corrupted download never sits where a loader would read it.

    Raises:
        DownloadError: the URL could not be fetched (offline, refused, HTTP error); names the URL.
        ChecksumMismatchError: the bytes' SHA-256 is not ``sha256``; the partial file is deleted.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "jresnet"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, partial.open("wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                out.write(chunk)
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError is an OSError
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"could not download {url}: {reason}") from None
    seen = _file_sha256(partial)
    if seen != sha256.lower():
        partial.unlink()
        raise ChecksumMismatchError(
            f"{url}: SHA-256 of the downloaded bytes is {seen}, expected {sha256.lower()}; "
            f"the download was deleted and nothing was written to {dest}"
        )
    os.replace(partial, dest)
    return dest


def _download_from_mirrors(remote: RemoteFile, dest: Path) -> str | None:
    """Try each mirror in turn; return None on success, else every mirror's failure in one line."""
    failures = []
    for url in remote.urls:
        try:
            download(url, dest, remote.sha256)
            return None
        except (DownloadError, ChecksumMismatchError) as error:
            failures.append(str(error))
    return "; ".join(failures)


def _unpack(archive: Path, folder: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            # filter="data" refuses absolute paths, links out of the folder and device files.
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"could not unpack {archive} into {folder}: {error}") from None


def fetch(source: OfficialSource, root: str | Path) -> Path:
    """Download each of ``source``'s files missing from ``root`` (checksum-verified) and unpack archives.

    Files already in ``root`` are kept and not downloaded again. Returns ``root``.

    Raises:
        DatasetNotFoundError: a file could not be downloaded from any mirror; the message says where
            to put it by hand and why each mirror failed.
    """
    folder = Path(root).expanduser()
    for remote in source.files:
        dest = folder / remote.filename
        if not dest.exists():
            failure = _download_from_mirrors(remote, dest)
            if failure is not None:
                raise source.not_found([folder], reason=failure)
        if source.archive:
            _unpack(dest, folder)
    return folder


def locate_or_fetch(
    source: OfficialSource,
    root: str | Path | None,
    *,
    download: bool,
    find: Callable[[Path], Path | None],
) -> Path:
    """Return the folder holding ``source``'s files, downloading them first if allowed.

    ``find(folder)`` returns the folder the loader should read (``folder`` itself, or a sub-folder an
    archive unpacked into) or None when the files are not there. Folders come from
    `OfficialSource.search_folders`; a download goes into the first.

    Raises:
        DatasetNotFoundError: not found, and ``download`` is False or the download failed.
    """
    folders = source.search_folders(root)
    for folder in folders:
        found = find(folder)
        if found is not None:
            return found
    if not download:
        raise source.not_found(folders)
    fetch(source, folders[0])
    found = find(folders[0])
    if found is None:
        raise source.not_found(
            folders, reason=f"the files downloaded into {folders[0]} are not the expected ones"
        )
    return found


# Checksums: SHA-256 of the published files as TensorFlow Datasets, Keras and other public manifests record
# them (several of which list them beside the publishers' MD5s: CIFAR's page prints c58f3010... for CIFAR-10
# and eb9058c3... for CIFAR-100, Fashion-MNIST's README 8d4fb7e6... for its train images). They were not
# recomputed here, as this code was written offline; a mismatch fails loudly rather than silently.
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

_IDX_EXPECTED = (
    "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] "
    "(plus t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] for the test split)"
)

MNIST_SOURCE = OfficialSource(
    title="MNIST",
    folder_name="mnist",
    expected=_IDX_EXPECTED,
    files=(
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            _MNIST_MIRRORS,
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            _MNIST_MIRRORS,
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            _MNIST_MIRRORS,
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            _MNIST_MIRRORS,
        ),
    ),
)

FASHION_MNIST_SOURCE = OfficialSource(
    title="Fashion-MNIST",
    folder_name="fashion_mnist",
    expected=_IDX_EXPECTED,
    files=(
        RemoteFile(
            "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            _FASHION_MNIST_MIRRORS,
        ),
        RemoteFile(
            "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            _FASHION_MNIST_MIRRORS,
        ),
        RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            _FASHION_MNIST_MIRRORS,
        ),
        RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            _FASHION_MNIST_MIRRORS,
        ),
    ),
    system_folders=(DEBIAN_FASHION_MNIST_DIR,),
    hint=(
        "on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` "
        f"(installs into {DEBIAN_FASHION_MNIST_DIR})"
    ),
)

CIFAR10_SOURCE = OfficialSource(
    title="CIFAR-10",
    folder_name="cifar10",
    expected="cifar-10-batches-py/ holding data_batch_1 .. data_batch_5 and batches.meta (plus test_batch)",
    files=(
        RemoteFile(
            "cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            _CIFAR_MIRRORS,
        ),
    ),
    archive=True,
)

CIFAR100_SOURCE = OfficialSource(
    title="CIFAR-100",
    folder_name="cifar100",
    expected="cifar-100-python/ holding train and meta (plus test)",
    files=(
        RemoteFile(
            "cifar-100-python.tar.gz",
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            _CIFAR_MIRRORS,
        ),
    ),
    archive=True,
)


def fetch_mnist(root: str | Path | None = None) -> Path:
    """Download the four MNIST idx files into ``root`` (default ``<data root>/mnist``)."""
    return fetch(MNIST_SOURCE, MNIST_SOURCE.search_folders(root)[0])


def fetch_fashion_mnist(root: str | Path | None = None) -> Path:
    """Download the four Fashion-MNIST idx files into ``root`` (default ``<data root>/fashion_mnist``)."""
    return fetch(FASHION_MNIST_SOURCE, FASHION_MNIST_SOURCE.search_folders(root)[0])


def fetch_cifar10(root: str | Path | None = None) -> Path:
    """Download and unpack the CIFAR-10 python tarball into ``root`` (default ``<data root>/cifar10``)."""
    return fetch(CIFAR10_SOURCE, CIFAR10_SOURCE.search_folders(root)[0])


def fetch_cifar100(root: str | Path | None = None) -> Path:
    """Download and unpack the CIFAR-100 python tarball into ``root`` (default ``<data root>/cifar100``)."""
    return fetch(CIFAR100_SOURCE, CIFAR100_SOURCE.search_folders(root)[0])
