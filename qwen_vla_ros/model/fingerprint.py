"""Content fingerprint of a checkpoint directory.

Trial metadata records which weights ran, and engine caches are keyed by it, so the
fingerprint covers file contents, not names or dates. Hashing gigabytes costs seconds, so
results are memoised per process and per (path, size, mtime) of every file.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

CHUNK_BYTES = 8 * 1024 * 1024


def _listing(root: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(
        (path.relative_to(root).as_posix(), path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    )


@lru_cache(maxsize=16)
def _hash(root: Path, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for relative, size, _ in listing:
        digest.update(f"{relative}\0{size}\0".encode())
        with open(root / relative, "rb") as handle:
            while block := handle.read(CHUNK_BYTES):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over every file's relative path, size and bytes, in sorted order."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    return _hash(root, _listing(root))
