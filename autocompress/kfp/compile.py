"""`autocompress compile`: every pipeline's IR YAML (and each component's spec), byte-stable so a
test can tell when the committed files are stale."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from . import pipelines_module, require_kfp

DEFAULT_COMPILED_DIR = Path("pipelines") / "compiled"
DEFAULT_COMPONENTS_DIR = Path("components") / "compiled"


def compile_pipelines(output_dir: str | os.PathLike = DEFAULT_COMPILED_DIR, *, names: list[str] | None = None,
                      components_dir: str | os.PathLike | None = None,
                      image_repository: str | None = None) -> list[Path]:
    """Compile every pipeline (or `names`) to `<output_dir>/<name>.yaml`; with `components_dir`, also
    each component's spec to `<components_dir>/<stage>.yaml`. `image_repository` replaces the default
    image repository (the tag stays the package version). Returns the written paths."""
    require_kfp()
    from kfp import compiler

    from ..atomic import write_text_atomic

    pipelines = pipelines_module()
    written = []
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in names or pipelines.names():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.yaml"
            compiler.Compiler().compile(pipelines.by_name(name), str(path))
            text = _retag(path.read_text(), image_repository)
        write_text_atomic(out / f"{name}.yaml", text)
        written.append(out / f"{name}.yaml")
    if names is None:
        _remove_leftovers(out, written)
    if components_dir is not None:
        from . import components

        cdir = Path(components_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        for comp in components.ALL.values():
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "c.yaml"
                compiler.Compiler().compile(comp, str(path))
                stem = comp.name.replace("-", "_")
                write_text_atomic(cdir / f"{stem}.yaml", _retag(path.read_text(), image_repository))
            written.append(cdir / f"{stem}.yaml")
        _remove_leftovers(cdir, written)
    return written


def _remove_leftovers(folder: Path, written: list[Path]) -> None:
    """A full compile owns its folders' *.yaml: files of removed pipelines/components go."""
    keep = {p.resolve() for p in written}
    for path in folder.glob("*.yaml"):
        if path.resolve() not in keep:
            path.unlink()


def _retag(text: str, image_repository: str | None) -> str:
    from .image import IMAGE_REPOSITORY

    if image_repository and image_repository != IMAGE_REPOSITORY:
        text = text.replace(f"{IMAGE_REPOSITORY}:", f"{image_repository}:")
    return _stable(text)


_HEADER_DEFAULT = re.compile(r"^(#\s+\w+: (?:list|dict) \[Default: )(.*)(\])$", re.M)


def _sorted_repr(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)


def _stable(text: str) -> str:
    """The compiler's header comment prints dict defaults in hash order and its trailing blank lines
    vary: normalise both so compiled files are byte-identical between runs (the staleness test)."""
    import ast

    def fix(m):
        try:
            return m.group(1) + _sorted_repr(ast.literal_eval(m.group(2))) + m.group(3)
        except (ValueError, SyntaxError):
            return m.group(0)
    return _HEADER_DEFAULT.sub(fix, text).rstrip("\n") + "\n"


def stale_files(output_dir: str | os.PathLike = DEFAULT_COMPILED_DIR,
                components_dir: str | os.PathLike | None = DEFAULT_COMPONENTS_DIR) -> list[str]:
    """Committed compiled files that differ from a fresh compile (or are missing / left over)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_p, fresh_c = Path(tmp) / "p", Path(tmp) / "c"
        compile_pipelines(fresh_p, components_dir=fresh_c if components_dir is not None else None)
        stale = []
        pairs = [(fresh_p, Path(output_dir))] + ([(fresh_c, Path(components_dir))] if components_dir else [])
        for fresh, committed in pairs:
            want = {p.name: p.read_text() for p in fresh.glob("*.yaml")}
            have = {p.name: p.read_text() for p in committed.glob("*.yaml")} if committed.is_dir() else {}
            stale += [str(committed / n) for n in sorted(set(want) | set(have)) if want.get(n) != have.get(n)]
        return stale




def main_compile(argv=None) -> int:  # `python -m autocompress.kfp.compile` regenerates the committed files
    import argparse

    p = argparse.ArgumentParser(description="compile every pipeline and component")
    p.add_argument("--output-dir", default=str(DEFAULT_COMPILED_DIR))
    p.add_argument("--components-dir", default=str(DEFAULT_COMPONENTS_DIR))
    p.add_argument("--image-repository")
    a = p.parse_args(argv)
    for path in compile_pipelines(a.output_dir, components_dir=a.components_dir, image_repository=a.image_repository):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main_compile())
