"""Build the autocompress images on this machine, saying what each step does and reusing what exists.

    python images/build.py                # stand-in base + CPU image + the GPU image's CPU-checkable stage
    python images/build.py --base python:3.11-slim --gpu full   # where a registry can be reached

Steps (each reused when its result is already on the Docker daemon):
1. the Docker daemon: used if one answers; otherwise started (root and `dockerd` needed) with the
   flags this kind of machine needs (no iptables, no bridge, cgroupfs), data under
   $AUTOCOMPRESS_DOCKER_ROOT (default /var/lib/autocompress-docker), log in /tmp/autocompress-dockerd.log;
2. the base: `--base IMAGE` (python:3.11-slim in production), or a stand-in for it built from Debian
   packages (`debootstrap --variant=minbase bookworm` + python3 3.11 in a venv on PATH, as the slim
   image has it), given this machine's CA bundle so that pip inside the build reaches the package
   registries as the host does; the root file system is cached as a tarball in
   $AUTOCOMPRESS_IMAGE_CACHE (default ~/.cache/autocompress/images), so a fresh daemon re-imports it
   in seconds;
3. the CPU image (images/Dockerfile) tagged as the pipelines reference it (autocompress/kfp/image.py);
4. the GPU image (images/Dockerfile.gpu): `--gpu package` (default) builds every step but the CUDA
   check on a CPU stand-in for the Paddle image (the CPU image's `deps` stage: Paddle + the
   dependencies); `--gpu full` builds it all on the real PADDLE_IMAGE; `--gpu skip` leaves it out.

The build context is made here from each Dockerfile's `<name>.dockerignore` allow-list and sent as a
tar stream, so any builder (the legacy one included) sees exactly the files BuildKit would. An image
carries the sha256 of its context and build arguments as a label; one whose label matches is reused.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _constant(path: str, name: str) -> str:
    """A string constant of the package, read without importing it (this script needs only the
    standard library; tests check that the values match autocompress.kfp.image)."""
    match = re.search(rf'^{name} = "([^"]+)"', (REPO / path).read_text(), re.M)
    if not match:
        raise RuntimeError(f"{path} no longer defines {name} as a string; update images/build.py")
    return match.group(1)


_VERSION = _constant("autocompress/version.py", "__version__")
CPU_IMAGE = f'{_constant("autocompress/kfp/image.py", "IMAGE_REPOSITORY")}:{_VERSION}'
GPU_IMAGE = f"{CPU_IMAGE}-gpu"

STANDIN_BASE = "autocompress-standin/python:3.11-slim"
STANDIN_PADDLE = "autocompress-standin/paddle:3.3.1-cpu"  # the CPU image's deps stage
GPU_PACKAGE = f"autocompress-standin/autocompress:{_VERSION}-gpu-package"
CONTEXT_LABEL = "org.autocompress.context-sha256"
DEBIAN_MIRROR = os.environ.get("AUTOCOMPRESS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DOCKERD_LOG = Path("/tmp/autocompress-dockerd.log")
VENV_PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(RuntimeError):
    """A build step that cannot go on; the message names the problem and the fix."""


def say(text: str) -> None:
    print(f"[images] {text}", flush=True)


def docker(*args: str, capture: bool = True, check: bool = True, timeout: float | None = None, stdin=None):
    if shutil.which("docker") is None:
        raise BuildError("the docker client is not installed: install Docker (Debian: apt-get install docker.io)")
    result = subprocess.run(["docker", *args], capture_output=capture, text=capture, timeout=timeout, stdin=stdin)
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else "see the output above"
        raise BuildError(f"docker {' '.join(args[:3])} failed ({result.returncode}): {detail}")
    return result


# --- 1. the daemon --------------------------------------------------------------------------------

def daemon_running() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_daemon(start: bool = True, wait: float = 60.0) -> str:
    """'running' if a daemon answers, 'started' after starting one; BuildError when neither works."""
    if daemon_running():
        return "running"
    if shutil.which("docker") is None:
        raise BuildError("the docker client is not installed: install Docker (Debian: apt-get install docker.io)")
    elsewhere = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock") != "unix:///var/run/docker.sock"
    if not start or elsewhere:
        raise BuildError(f"no Docker daemon answers at {os.environ.get('DOCKER_HOST', 'the default socket')} "
                         "(`docker info` failed): start it, or point DOCKER_HOST at a running one")
    if shutil.which("dockerd") is None:
        raise BuildError("no Docker daemon answers and dockerd is not installed: install Docker (Debian: "
                         "apt-get install docker.io) or set DOCKER_HOST to a running daemon")
    if os.geteuid() != 0:
        raise BuildError("no Docker daemon answers and only root can start dockerd here: start the daemon "
                         "(sudo systemctl start docker) or run this as root")
    root = os.environ.get("AUTOCOMPRESS_DOCKER_ROOT", "/var/lib/autocompress-docker")
    Path(root).mkdir(parents=True, exist_ok=True)
    cmd = ["dockerd", "--host", "unix:///var/run/docker.sock", "--data-root", root, "--iptables=false",
           "--bridge=none", "--exec-opt", "native.cgroupdriver=cgroupfs"]
    say(f"no Docker daemon answers: starting `{' '.join(cmd)}` (log: {DOCKERD_LOG})")
    with open(DOCKERD_LOG, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BuildError(f"dockerd exited with {proc.returncode} at start; its log: "
                             f"{DOCKERD_LOG.read_text(errors='replace')[-1500:]}")
        if daemon_running():
            say(f"dockerd is up (pid {proc.pid})")
            return "started"
        time.sleep(1)
    raise BuildError(f"dockerd (pid {proc.pid}) did not answer within {wait:.0f} s; see {DOCKERD_LOG}")


def image_labels(tag: str) -> dict | None:
    """The image's labels ({} when it has none), or None when the daemon has no such image."""
    result = docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip() or "null") or {}


def _image_id(tag: str) -> str | None:
    result = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


# --- 2. the stand-in base -------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("AUTOCOMPRESS_IMAGE_CACHE", Path.home() / ".cache" / "autocompress" / "images"))


def standin_base(rebuild: bool = False) -> str:
    """A stand-in for python:3.11-slim from Debian bookworm packages (its python3 is 3.11)."""
    if not rebuild and image_labels(STANDIN_BASE) is not None:
        say(f"base: reusing {STANDIN_BASE} (the stand-in for python:3.11-slim) from the daemon")
        return STANDIN_BASE
    tarball = cache_dir() / "standin-bookworm-python3.11.tar"
    if rebuild or not tarball.exists():
        _debootstrap(tarball)
    else:
        say(f"base: importing the cached stand-in root file system {tarball}")
    docker("import", "--change", f"ENV PATH={VENV_PATH}", "--change", "ENV PIP_CERT=/etc/ssl/host-ca-bundle.pem",
           "--change", 'CMD ["python3"]', str(tarball), STANDIN_BASE)
    say(f"base: {STANDIN_BASE} ({image_size(STANDIN_BASE) / 1e6:.0f} MB)")
    return STANDIN_BASE


def _debootstrap(tarball: Path) -> None:
    if os.geteuid() != 0:
        raise BuildError("building the stand-in base needs root (debootstrap, chroot): run this as root, or "
                         "pass --base python:3.11-slim where a registry can be reached")
    if shutil.which("debootstrap") is None:
        raise BuildError("the stand-in base is built with debootstrap, which is not installed: "
                         "apt-get install debootstrap (or pass --base python:3.11-slim)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        say(f"base: debootstrap --variant=minbase bookworm + python3, python3-venv from {DEBIAN_MIRROR} "
            "(about 1 min)")
        result = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                                 "bookworm", str(root), DEBIAN_MIRROR], capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"debootstrap failed ({result.returncode}); check that {DEBIAN_MIRROR} is reachable "
                             f"(AUTOCOMPRESS_DEBIAN_MIRROR picks another mirror): {result.stdout[-1500:]}"
                             f"{result.stderr[-1500:]}")
        host_ca = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
        if host_ca.is_file():  # pip in the build trusts what the host trusts (e.g. a TLS-inspecting proxy)
            shutil.copyfile(host_ca, root / "etc/ssl/host-ca-bundle.pem")
        else:
            shutil.copyfile(root / "etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/host-ca-bundle.pem")
        say("base: python3 -m venv /opt/venv (python and pip on PATH, as in python:3.11-slim)")
        subprocess.run(["chroot", str(root), "/usr/bin/python3", "-m", "venv", "/opt/venv"], check=True)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
    say(f"base: root file system in {tarball} ({tarball.stat().st_size / 1e6:.0f} MB, "
        f"{time.perf_counter() - start:.0f} s)")


# --- 3./4. the images -----------------------------------------------------------------------------

def _rule(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def context_files(dockerfile: Path) -> list[str]:
    """The repository files the Dockerfile's `.dockerignore` lets into the build context (the last
    matching rule decides; a rule that matches a folder covers what is inside)."""
    rules = []
    for line in (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _rule(line.lstrip("!").strip("/"))))
    files = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")  # .git, venvs
        for name in names:
            rel = (Path(folder) / name).relative_to(REPO).as_posix()
            if _allowed(rel, rules):
                files.append(rel)
    return sorted(files)


def _allowed(rel: str, rules: list) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for allow, rule in rules:
        if any(rule.fullmatch(p) for p in prefixes):
            included = allow
    return included


def build_context(dockerfile: Path, build_args: dict, target: str | None) -> tuple[bytes, str]:
    """The context tar (the allowed files + the Dockerfile) and its sha256 with the build arguments."""
    digest = hashlib.sha256(json.dumps([build_args, target]).encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in sorted(set(context_files(dockerfile)) | {dockerfile.relative_to(REPO).as_posix()}):
            data = (REPO / rel).read_bytes()
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()


def build_image(dockerfile: Path, tag: str, build_args: dict, target: str | None = None, rebuild: bool = False,
                what: str = "image") -> str:
    # the base images' ids count too: a rebuilt or newly pulled base rebuilds what stands on it
    ids = {value: _image_id(value) for value in build_args.values()}
    context, digest = build_context(dockerfile, {**build_args, "base image ids": ids}, target)
    labels = image_labels(tag)
    if not rebuild and labels and labels.get(CONTEXT_LABEL) == digest:
        say(f"{what}: reusing {tag} (built from these sources and arguments)")
        return tag
    args = ["build", "--network", "host", "-f", dockerfile.relative_to(REPO).as_posix(), "-t", tag,
            "--label", f"{CONTEXT_LABEL}={digest}"]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    if target:
        args += ["--target", target]
    say(f"{what}: docker {' '.join(args)} - (context: {len(context) / 1e6:.1f} MB from "
        f"{dockerfile.name}.dockerignore; unchanged layers come from the build cache)")
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stdin:
        stdin.write(context)
        stdin.seek(0)
        docker(*args, "-", capture=False, stdin=stdin)
    say(f"{what}: {tag} built in {time.perf_counter() - start:.0f} s ({image_size(tag) / 1e9:.2f} GB)")
    return tag


def build_all(base: str | None = None, gpu: str = "package", rebuild: bool = False, start_daemon: bool = True) -> dict:
    """Every step; returns {'base', 'cpu', 'gpu'} tags (gpu None when skipped)."""
    ensure_daemon(start=start_daemon)
    if base:
        say(f"base: {base} (pulled by the build if the daemon lacks it)")
    base = base or standin_base(rebuild=rebuild)
    cpu = build_image(REPO / "images" / "Dockerfile", CPU_IMAGE, {"BASE_IMAGE": base}, target="image",
                      rebuild=rebuild, what="CPU image")
    gpu_tag = None
    if gpu == "package":
        paddle = build_image(REPO / "images" / "Dockerfile", STANDIN_PADDLE, {"BASE_IMAGE": base}, target="deps",
                             rebuild=rebuild, what="GPU image (CPU stand-in for the Paddle image)")
        gpu_tag = build_image(REPO / "images" / "Dockerfile.gpu", GPU_PACKAGE, {"PADDLE_IMAGE": paddle},
                              target="package", rebuild=rebuild, what="GPU image (every step but the CUDA check)")
    elif gpu == "full":
        gpu_tag = build_image(REPO / "images" / "Dockerfile.gpu", GPU_IMAGE, {}, rebuild=rebuild, what="GPU image")
    return {"base": base, "cpu": cpu, "gpu": gpu_tag}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="the CPU image's base (default: a stand-in for python:3.11-slim built "
                                  "from Debian packages)")
    p.add_argument("--gpu", choices=("package", "full", "skip"), default="package",
                   help="package: the GPU Dockerfile's CPU-checkable stage on a CPU stand-in (default); "
                        "full: the real GPU image (needs the Paddle GPU image); skip")
    p.add_argument("--rebuild", action="store_true", help="rebuild even what exists (the stand-in base included)")
    p.add_argument("--no-start-daemon", action="store_true", help="fail instead of starting dockerd")
    a = p.parse_args(argv)
    try:
        tags = build_all(a.base, a.gpu, a.rebuild, start_daemon=not a.no_start_daemon)
    except BuildError as err:
        print(f"images/build.py: error: {err}", file=sys.stderr)
        return 1
    for kind, tag in tags.items():
        if tag:
            say(f"{kind:<4} {tag}  {image_size(tag) / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
