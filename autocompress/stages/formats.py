"""The model format at the edges of a run: the engines edit legacy programs (the program layer's PIR
backend hands its edits to the legacy one, see `program`); a Paddle 3 PIR input (`*.json`) becomes a
verified legacy working copy first, and the result goes back to the input's format and file names,
so deploy code that loaded `inference.json` loads the compressed one unchanged (docs/pir.md)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import AutoCompressError
from ..program import PIR, backend_for
from .artifact import ModelArtifact

log = logging.getLogger("autocompress")


def working_copy(files, folder):
    """The legacy program the engines work on: the input itself, or its verified translation."""
    if files.format != PIR:
        return files
    log.info("%s is a PIR model: translating it into a legacy working copy", files.model_filename)
    return backend_for(files).editable(files, Path(folder))


def in_input_format(artifact: ModelArtifact, input_files, folder) -> ModelArtifact:
    """`artifact` in the input's format. When Paddle cannot run the result as PIR (e.g. some int8
    programs in Paddle 3.3.1), the legacy model is kept — a model is never lost — and a warning says
    why and how to load it."""
    if input_files.format != PIR or artifact.files.format == PIR:
        return artifact
    try:
        converted = backend_for(input_files).restore(artifact.files, Path(folder))
    except AutoCompressError as err:
        import paddle

        warning = (f"the input is a PIR model, but the compressed program could not be converted back to PIR with "
                   f"Paddle {paddle.__version__} ({err}); it is saved in the legacy format "
                   f"({artifact.files.model_filename}), which Paddle Inference loads the same way")
        log.warning("%s", warning)
        return ModelArtifact(artifact.files, {**artifact.meta, "warnings": artifact.meta.get("warnings", []) + [warning]},
                             artifact.trials, artifact.curve)
    return ModelArtifact(converted, {**artifact.meta, "format": PIR}, artifact.trials, artifact.curve)
