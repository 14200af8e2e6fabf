"""The auto pipeline in containers: every stage (the parallel branches included) in the CPU image
through kfp's DockerRunner, as the manifests run pods (non-root, read-only root file system). Skips
where tests/test_containers.py skips (no Docker here)."""
from __future__ import annotations

import json

from test_containers import images, readable  # noqa: F401  (module fixtures; the module skips without Docker)
from test_kfp_auto import _yaml

from autocompress.kfp import local_run


def test_auto_pipeline_in_containers(images, tmp_path, readable, hashes):  # noqa: F811
    digits_files, data = readable
    before = hashes(digits_files.model_dir)
    lines = []
    run = local_run.run_local(_yaml(tmp_path, digits_files.model_dir, data), echo=lines.append, runner="docker")
    s = run.summary
    assert run.pipeline == "auto_cpu" and s["mode"] == "auto" and any("in containers" in line for line in lines)
    assert sum(line.startswith("  ok auto-branch") for line in lines) == 2
    assert {c["id"] for c in s["candidates"] if c["status"] == "done"} == {"ptq", "prune-0.5"}
    assert s["model_dir"] == str(run.model_dir) and (run.model_dir / digits_files.model_filename).exists()
    assert all((run.save_dir / name).exists() for name in ("report.html", "report.md"))
    assert json.loads((run.save_dir / "summary.json").read_text())["chosen"] == s["chosen"]
    assert hashes(digits_files.model_dir) == before
