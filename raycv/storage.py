"""Paths that may be local folders or pyarrow filesystem URIs (s3://, gs://, file://).

Datasets and runs live on "storage": a local folder by default, object storage on a cluster. Nothing
here assumes that two nodes share a local disk. Credentials and endpoints come from the environment, as
pyarrow (and Ray, which uses pyarrow too) reads them: on a cluster every node has the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from raycv.errors import RaycvError

CREDENTIALS = {
    "s3": "S3 credentials come from the environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
          "or the node's IAM role; AWS_ENDPOINT_URL names another S3-compatible store",
    "gs": "GCS credentials come from GOOGLE_APPLICATION_CREDENTIALS or the node's service account",
}


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """Local paths become absolute (Ray workers run in other directories); URIs pass through, without options:
    runs and datasets are folders of derived paths, and an option in the middle of one would be lost."""
    if not is_uri(path):
        return os.path.abspath(os.path.expanduser(str(path)))
    options = urllib.parse.parse_qs(urllib.parse.urlsplit(str(path)).query, keep_blank_values=True)
    if options:
        raise RaycvError(f"{shown(path)}: options in a storage URI ({', '.join(options)}) are not supported; set "
                         "them in the environment instead (for S3: AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...)")
    return str(path)


def shown(path: str) -> str:
    """A URI as errors show it: without user:password@ or options."""
    parts = urllib.parse.urlsplit(str(path))
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@contextlib.contextmanager
def reaching(*paths: str) -> Iterator[None]:
    """pyarrow reports an object store it cannot use (no credentials, no such bucket, no network) as a bare
    OSError; make that one line naming the URI. Missing files stay FileNotFoundError, local errors as they are."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as error:
        uri = next((path for path in paths if is_uri(path)), None)
        if uri is None:
            raise
        hint = CREDENTIALS.get(str(uri).split("://", 1)[0])
        detail = " ".join(str(error).split()).rstrip(".")
        raise RaycvError(f"cannot access {shown(uri)}: {detail}" + (f". {hint}" if hint else "")) from None


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        with reaching(path):
            return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), absolute(path)


def join(path: str, *parts: str) -> str:
    return "/".join([str(path).rstrip("/"), *parts])


def under(root: str, inner: str) -> str:
    """The storage path of `inner`, a path under `root` as Ray reports it (checkpoints, trials): inside the
    filesystem, so for object stores without the s3:// (or gs://, ...) of the storage URI."""
    _, root_inner = resolve(root)
    root_inner = root_inner.rstrip("/")
    if inner != root_inner and not inner.startswith(root_inner + "/"):
        raise ValueError(f"{inner} is not under {root} ({root_inner})")
    return join(root, *filter(None, inner[len(root_inner):].split("/")))


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    with reaching(path):
        return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, inner = resolve(path)
    with reaching(path):
        return fs.get_file_info(inner).type == pafs.FileType.Directory


def list_dir(path: str) -> list[str]:
    fs, inner = resolve(path)
    with reaching(path):
        return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(inner)))


def list_files(path: str) -> list[str]:
    """The files under the folder `path` at any depth, as sorted paths relative to it. One listing: on object
    stores, walking folder by folder with list_dir and is_dir would cost a request per entry."""
    fs, inner = resolve(path)
    with reaching(path):
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    prefix = inner.rstrip("/") + "/"
    return sorted(info.path[len(prefix):] for info in infos if info.type == pafs.FileType.File)


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    with reaching(path), fs.open_input_stream(inner) as stream:
        return stream.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_text(path: str, text: str) -> None:
    fs, inner = resolve(path)
    with reaching(path):
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as stream:
            stream.write(text.encode())


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def delete_dir(path: str) -> None:
    fs, inner = resolve(path)
    with reaching(path):
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            fs.delete_dir(inner)


def move(src: str, dst: str) -> None:
    """Move the folder `src` to `dst` on the same storage: a rename on local disks (atomic); on object stores,
    which rename single keys only, a server-side copy of every file and then a delete, never atomic."""
    fs, src_inner = resolve(src)
    _, dst_inner = resolve(dst)
    with reaching(src):
        if isinstance(fs, pafs.LocalFileSystem):
            fs.move(src_inner, dst_inner)
            return
        pafs.copy_files(src_inner, dst_inner, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src_inner)


def copy_dir(src: str, dst: str) -> None:
    """Replace `dst` with a copy of the folder `src` (across filesystems too)."""
    src_fs, src_inner = resolve(src)
    dst_fs, dst_inner = resolve(dst)
    delete_dir(dst)
    with reaching(dst, src):
        dst_fs.create_dir(dst_inner, recursive=True)
        pafs.copy_files(src_inner, dst_inner, source_filesystem=src_fs, destination_filesystem=dst_fs)
