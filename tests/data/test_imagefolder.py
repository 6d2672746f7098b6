"""imagefolder(): real PNG/JPEG files written with Pillow, the .npz cache, and the real CIFAR-10 JPEGs."""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jresnet.data import imagefolder

CIFAR_JPEG_TAR = "cifar10-train-jpeg.tar.gz"


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Save (H, W, 3) or (H, W) uint8 pixels with Pillow; the suffix picks PNG or JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def solid(value: int, size: tuple[int, int] = (5, 7)) -> np.ndarray:
    """An RGB image whose red, green and blue are value, value+1, value+2 everywhere."""
    return np.stack([np.full(size, value + offset, np.uint8) for offset in range(3)], axis=-1)


@pytest.fixture
def png_folder(tmp_path: Path) -> Path:
    """dog/ with 2 images and cat/ with 3, written out of order; each image's colour identifies it."""
    root = tmp_path / "pets"
    for name, value in [("b.png", 40), ("a.png", 30)]:
        write_image(root / "dog" / name, solid(value))
    for name, value in [("3.png", 20), ("1.png", 0), ("2.PNG", 10)]:
        write_image(root / "cat" / name, solid(value))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


@pytest.fixture
def count_image_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path: object, *args: object, **kwargs: object) -> Image.Image:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", counting_open)
    yield opened


def test_classes_are_sorted_folders_and_files_are_sorted_within(png_folder: Path) -> None:
    train = imagefolder(png_folder)["train"]
    assert train.class_names == ("cat", "dog")
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    assert train.images.shape == (5, 3, 5, 7) and train.images.dtype == np.uint8
    # PNG is lossless: red of each image, in order 1, 2, 3 (cat) then a, b (dog).
    assert train.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]
    assert train.images[:, 2, 4, 6].tolist() == [2, 12, 22, 32, 42]
    assert train.name == "pets"


def test_grayscale_images_become_rgb_by_default_or_one_channel_with_mode_l(tmp_path: Path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    write_image(tmp_path / "only" / "g.png", gray)
    rgb = imagefolder(tmp_path)["train"].images
    assert rgb.shape == (1, 3, 4, 5) and all(np.array_equal(rgb[0, c], gray) for c in range(3))
    single = imagefolder(tmp_path, mode="L")["train"].images
    assert single.shape == (1, 1, 4, 5) and np.array_equal(single[0, 0], gray)


def test_jpegs_decode_close_to_what_was_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = (np.linspace(0, 255, 16)[None, :, None] * np.ones((16, 1, 3))).astype(np.uint8)
    write_image(tmp_path / "grad" / "x.jpg", smooth)
    write_image(tmp_path / "grad" / "y.jpeg", 255 - smooth)
    write_image(tmp_path / "noise" / "z.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    train = imagefolder(tmp_path)["train"]
    assert train.images.shape == (3, 3, 16, 16)
    assert np.abs(train.images[0].transpose(1, 2, 0).astype(int) - smooth).mean() < 4  # lossy, but close


def test_images_of_different_sizes_name_the_first_differing_file(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "0.png", solid(0, (8, 8)))
    write_image(tmp_path / "a" / "1.png", solid(0, (8, 8)))
    write_image(tmp_path / "b" / "0.png", solid(0, (8, 9)))  # first differing in sorted order
    write_image(tmp_path / "b" / "1.png", solid(0, (6, 8)))
    with pytest.raises(ValueError) as raised:
        imagefolder(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'b' / '0.png'}: image is 8×9 (H×W)")
    assert f"{tmp_path / 'a' / '0.png'}, is 8×8" in message


def test_second_call_reads_the_cache_without_opening_images(
    png_folder: Path, tmp_path: Path, count_image_opens: list[str]
) -> None:
    cache = tmp_path / "cache"
    first = imagefolder(png_folder, cache)["train"]
    assert len(count_image_opens) == 5 and len(list(cache.glob("*.npz"))) == 1

    second = imagefolder(png_folder, cache)["train"]

    assert len(count_image_opens) == 5  # no file opened on the second call
    assert np.array_equal(second.images, first.images) and np.array_equal(second.labels, first.labels)
    assert second.class_names == first.class_names


def test_touching_a_file_invalidates_the_cache(
    png_folder: Path, tmp_path: Path, count_image_opens: list[str]
) -> None:
    cache = tmp_path / "cache"
    imagefolder(png_folder, cache)
    changed = png_folder / "dog" / "a.png"
    write_image(changed, solid(99))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a distinct mtime even on coarse clocks
    opened_before = len(count_image_opens)

    train = imagefolder(png_folder, cache)["train"]

    assert len(count_image_opens) - opened_before == 5
    assert train.images[3, 0, 0, 0] == 99
    assert len(list(cache.glob("*.npz"))) == 2


def test_a_cache_folder_inside_the_image_folder_is_not_a_class(png_folder: Path) -> None:
    for _ in range(2):  # the second call finds the cache folder beside the class folders
        train = imagefolder(png_folder, png_folder / "cache")["train"]
        assert train.class_names == ("cat", "dog")


def test_the_mode_is_part_of_the_cache_key(png_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert imagefolder(png_folder, cache)["train"].images.shape[1] == 3
    assert imagefolder(png_folder, cache, mode="L")["train"].images.shape[1] == 1


def test_an_unreadable_cache_is_ignored_with_a_warning(png_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    expected = imagefolder(png_folder, cache)["train"].images
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable image-folder cache"):
        again = imagefolder(png_folder, cache)["train"].images
    assert np.array_equal(again, expected)


def test_a_split_layout_gives_train_and_test_with_the_train_classes(tmp_path: Path) -> None:
    for split, count in [("train", 2), ("test", 1)]:
        for label in ("cat", "dog"):
            for index in range(count):
                write_image(tmp_path / split / label / f"{index}.png", solid(index))
    splits = imagefolder(tmp_path)
    assert sorted(splits) == ["test", "train"]
    assert len(splits["train"]) == 4 and len(splits["test"]) == 2
    assert splits["test"].class_names == ("cat", "dog") and splits["test"].labels.tolist() == [0, 1]


def test_a_test_class_unknown_to_train_is_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "cat" / "0.png", solid(0))
    write_image(tmp_path / "test" / "cow" / "0.png", solid(0))
    with pytest.raises(ValueError, match=r"class folder\(s\) cow are not among the classes \['cat'\]"):
        imagefolder(tmp_path)


def test_a_split_layout_with_other_folders_is_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "cat" / "0.png", solid(0))
    write_image(tmp_path / "val" / "cat" / "0.png", solid(0))
    with pytest.raises(ValueError, match="split folder train/ but also val"):
        imagefolder(tmp_path)


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda root: None, FileNotFoundError, ["does not exist"]),
        (lambda root: root.mkdir(), ValueError, ["no class folders"]),
        (lambda root: (root / "empty").mkdir(parents=True), ValueError, ["empty", "holds no"]),
        (
            lambda root: (
                (root / "c").mkdir(parents=True) or (root / "c" / "broken.png").write_bytes(b"not a png")
            ),
            ValueError,
            ["broken.png", "cannot decode image"],
        ),
    ],
    ids=["missing", "no-classes", "empty-class", "undecodable"],
)
def test_bad_folders_get_clear_errors(
    tmp_path: Path, build: object, error: type[Exception], words: list[str]
) -> None:
    root = tmp_path / "root"
    build(root)  # type: ignore[operator]
    with pytest.raises(error) as raised:
        imagefolder(root)
    for word in words:
        assert word in str(raised.value)


def test_an_unknown_mode_is_refused(png_folder: Path) -> None:
    # ValueError from imagefolder's own check; TypeError where a test run adds jaxtyping's import hook.
    with pytest.raises((ValueError, TypeError), match="mode"):
        imagefolder(png_folder, mode="CMYK")  # type: ignore[arg-type]


def extract_cifar_jpegs(tar_path: Path, dest: Path, *, classes: tuple[str, ...], per_class: int) -> None:
    """Unpack the first ``per_class`` ``train/<class>/*.jpg`` files of each class in ``classes``."""
    taken = dict.fromkeys(classes, 0)
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and taken.get(parts[1], per_class) < per_class:
                tar.extract(member, dest, filter="data")
                taken[parts[1]] += 1
            if all(count == per_class for count in taken.values()):
                break


@pytest.mark.realdata
def test_real_cifar10_jpegs_two_classes(shared_data: Path, tmp_path: Path) -> None:
    extract_cifar_jpegs(
        shared_data / CIFAR_JPEG_TAR, tmp_path, classes=("airplane", "automobile"), per_class=50
    )
    splits = imagefolder(tmp_path, tmp_path / "cache")
    train = splits["train"]
    assert list(splits) == ["train"]  # the tarball's train/ folder is read as the train split
    assert train.images.shape == (100, 3, 32, 32) and train.class_names == ("airplane", "automobile")
    assert np.array_equal(np.bincount(train.labels), [50, 50])
    assert 60 < train.images.mean() < 190  # natural photos, neither blank nor saturated


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cifar10_jpegs_all_classes_cached(shared_data: Path, tmp_path: Path) -> None:
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    extract_cifar_jpegs(shared_data / CIFAR_JPEG_TAR, tmp_path, classes=classes, per_class=200)
    cache = tmp_path / "cache"  # inside the image folder: it must not be read as a split
    started = time.perf_counter()
    train = imagefolder(tmp_path, cache)["train"]
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cached = imagefolder(tmp_path, cache)["train"]
    cached_seconds = time.perf_counter() - started
    assert train.images.shape == (2000, 3, 32, 32) and train.class_names == classes
    assert np.array_equal(np.bincount(train.labels), np.full(10, 200))
    assert np.array_equal(cached.images, train.images) and np.array_equal(cached.labels, train.labels)
    assert cached_seconds < decode_seconds
