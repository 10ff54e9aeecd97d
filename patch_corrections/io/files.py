"""Writing files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds.

    ``suffix`` ends the temporary name, for writers that pick a format or compression from
    it (``.nii.gz``). On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


class StagedFiles:
    """Files of one run, written under temporary names and moved into place together.

    Nothing under a final name changes until ``commit``; ``discard`` removes the temporary
    files and the folders this run created, so a failed run leaves everything as it was.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._created: list[Path] = []

    def make_dirs(self, *folders: Path) -> None:
        """Create ``folders`` (and parents), remembering which ones did not exist."""
        for folder in folders:
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            self._created.extend(missing)

    def stage(self, final: Path, suffix: str = "") -> Path:
        """A temporary path to write ``final``'s content to; ``suffix`` ends its name."""
        final = Path(final)
        temporary = final.with_name(f".{final.name}.staged-{secrets.token_hex(4)}{suffix}")
        self._staged.append((temporary, final))
        return temporary

    @property
    def finals(self) -> list[Path]:
        return [final for _, final in self._staged]

    def commit(self) -> None:
        """Rename every staged file to its final name."""
        for temporary, final in self._staged:
            os.replace(temporary, final)
        self._staged = []
        self._created = []

    def discard(self) -> None:
        """Remove staged files and the folders created for them (if left empty)."""
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
        self._staged = []
        for folder in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._created = []
