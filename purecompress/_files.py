"""Reading purecompress's safetensors files: :class:`FileFormatError` and the one reader of their
JSON header and tensors, shared by mask files and quantization-parameter files.

A loader trusts nothing in a file: a pickle, random bytes or an empty file at a safetensors path,
and a header that is not JSON, are reported as such, naming the file; each loader then checks
that the header it parsed describes the tensors it holds.
"""

from __future__ import annotations

import json
import os

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

__all__ = [
    "FileFormatError",
    "read_safetensors",
]


class FileFormatError(ValueError):
    """A file is not what its loader reads: not safetensors, or a header that does not describe
    the tensors it holds (the message names the file and the entry)."""


def read_safetensors(path: str | os.PathLike[str], key: str, what: str) -> tuple[object, dict[str, Tensor]]:
    """The JSON value stored under ``key`` in a safetensors file's metadata, and its tensors.

    Args:
        path: the file.
        key: the metadata entry that marks the file as one of purecompress's (a JSON string).
        what: what the file holds, for messages (``'masks'``).

    Raises:
        FileNotFoundError: no file at ``path``.
        FileFormatError: the file is not a safetensors file, has no ``key`` entry, or the entry is
            not JSON.
    """
    name = os.fspath(path)
    try:
        with safe_open(name, framework="pt") as f:
            raw = (f.metadata() or {}).get(key)
        tensors = load_file(name)
    except SafetensorError as err:  # a pickle, random bytes or an empty file
        raise FileFormatError(f"{name!r} is not a safetensors file ({err})") from None
    if raw is None:
        raise FileFormatError(f"{name!r} is not a purecompress {what} file (no {key!r} metadata)")
    try:
        return json.loads(raw), tensors
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{name!r}: the {key!r} header is not JSON ({err})") from None
