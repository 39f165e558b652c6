"""Paths that may be local folders or pyarrow filesystem URIs (s3://, gs://, file://).

Datasets and runs live on "storage": a local folder by default, object storage on a cluster. Nothing
here assumes that two nodes share a local disk.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """Local paths become absolute (Ray workers run in other directories); URIs pass through."""
    return str(path) if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), absolute(path)


def join(path: str, *parts: str) -> str:
    return "/".join([str(path).rstrip("/"), *parts])


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def list_dir(path: str) -> list[str]:
    fs, inner = resolve(path)
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(inner)))


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_text(path: str, text: str) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(text.encode())


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def delete_dir(path: str) -> None:
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def move(src: str, dst: str) -> None:
    """A rename on local disks (atomic); a copy-then-delete on object stores, which is why datasets
    also carry a manifest written last: readers trust a dataset only once its manifest exists."""
    fs, src_inner = resolve(src)
    _, dst_inner = resolve(dst)
    fs.move(src_inner, dst_inner)


def copy_dir(src: str, dst: str) -> None:
    """Replace `dst` with a copy of the folder `src` (across filesystems too)."""
    src_fs, src_inner = resolve(src)
    dst_fs, dst_inner = resolve(dst)
    delete_dir(dst)
    dst_fs.create_dir(dst_inner, recursive=True)
    pafs.copy_files(src_inner, dst_inner, source_filesystem=src_fs, destination_filesystem=dst_fs)
