"""Object-store URIs (`s3://bucket/key`, `minio://bucket/key`) and local paths, one interface.

(Over 400 lines on purpose: the client, its retry rule, the size/sha256 verification and the
safe-path checks only make sense together, and splitting them would spread one protocol over files.)

Transfers go through the `minio` SDK (imported lazily: the engine works without it for local paths).

- Endpoint and credentials come from the environment only, never from arguments that could end up in
  a pipeline parameter or a log: `S3_ENDPOINT` / `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
  (optionally `AWS_SESSION_TOKEN`, `AWS_REGION`), or `MINIO_ENDPOINT` / `MINIO_ACCESS_KEY` /
  `MINIO_SECRET_KEY`. The endpoint may carry a scheme (`http://127.0.0.1:9000`); otherwise
  `S3_SECURE` / `MINIO_SECURE` (`true`/`false`) decide, default https except for `minio://` URIs,
  which default to KFP's in-cluster MinIO (`minio-service.kubeflow:9000`, plain http).
- Uploads store the file's sha256 in the object metadata (`x-amz-meta-sha256`); downloads hash while
  streaming and compare size and sha256 (objects written by other tools: size only). Uploads are
  checked back with a HEAD. Large files go up in multipart (`part_size`).
- Transient failures (connection resets, truncated bodies, 5xx, throttling, checksum mismatch)
  retry with exponential backoff; permanent ones (missing bucket / key, rejected credentials) raise
  `StorageError` at once, naming the fix. A download lands in a temporary file and is renamed into
  place, so an interrupted transfer never leaves a half-written file where a good one is expected.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from .atomic import as_if_created, disk_full, sweep_stale, temp_prefix
from .errors import StorageError, TransientStorageError

log = logging.getLogger("autocompress.storage")

SCHEMES = ("s3", "minio")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SHA256_META = "sha256"  # stored as x-amz-meta-sha256
DEFAULT_PART_SIZE = 16 * 1024 * 1024  # S3's minimum part size is 5 MiB
MIN_PART_SIZE = 5 * 1024 * 1024
KFP_MINIO_ENDPOINT = "minio-service.kubeflow:9000"
_CHUNK = 1024 * 1024

# S3 error codes: permanent ones map to a clear message, the rest of these are retried
_TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "OperationAborted", "InternalServerError", "IncompleteBody", "BadDigest"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                     "InvalidToken", "AuthorizationHeaderMalformed"}


def is_remote(uri) -> bool:
    """True for `s3://` and `minio://` URIs."""
    return isinstance(uri, str) and uri.split("://", 1)[0].lower() in SCHEMES and "://" in uri


@dataclasses.dataclass(frozen=True)
class ObjectURI:
    scheme: str
    bucket: str
    key: str  # no leading slash; may be '' (the whole bucket)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def child(self, rel: str) -> "ObjectURI":
        base = self.key.rstrip("/")
        return ObjectURI(self.scheme, self.bucket, f"{base}/{rel}" if base else rel)


def parse_uri(uri: str) -> ObjectURI:
    if not is_remote(uri):
        raise StorageError(f"{uri!r} is not an object-store URI; use s3://bucket/key or minio://bucket/key")
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name; use {scheme}://bucket/key")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 characters: lowercase letters, "
                           "digits, '.' and '-', starting and ending with a letter or digit)")
    key = key.lstrip("/")
    if any(part == ".." for part in key.split("/")):
        raise StorageError(f"{uri!r}: '..' is not allowed in object keys")
    return ObjectURI(scheme.lower(), bucket, key)


def _env(*names: str) -> Optional[str]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    endpoint: str
    secure: bool
    access_key: Optional[str] = dataclasses.field(default=None, repr=False)
    secret_key: Optional[str] = dataclasses.field(default=None, repr=False)
    session_token: Optional[str] = dataclasses.field(default=None, repr=False)
    region: Optional[str] = None

    @classmethod
    def from_env(cls, scheme: str = "s3") -> "StorageSettings":
        """Read endpoint and credentials from the environment (see the module docstring)."""
        endpoint = _env("S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT")
        secure_text = _env("S3_SECURE", "MINIO_SECURE")
        if endpoint is None:
            endpoint = KFP_MINIO_ENDPOINT if scheme == "minio" else "s3.amazonaws.com"
            secure = scheme != "minio"
        else:
            secure = True
        if "://" in endpoint:
            proto, endpoint = endpoint.split("://", 1)
            secure = proto.lower() == "https"
        elif secure_text is not None:
            secure = _truthy(secure_text)
        endpoint = endpoint.rstrip("/")
        if "/" in endpoint:
            raise StorageError(f"object-store endpoint {endpoint!r} must be host[:port] (a path is not allowed); "
                               "fix S3_ENDPOINT / MINIO_ENDPOINT")
        access = _env("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER")
        secret = _env("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")
        if bool(access) != bool(secret):
            raise StorageError("only one of the access key / secret key is set; set both AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY and MINIO_SECRET_KEY)")
        return cls(endpoint=endpoint, secure=secure, access_key=access, secret_key=secret,
                   session_token=_env("AWS_SESSION_TOKEN"), region=_env("AWS_REGION", "AWS_DEFAULT_REGION"))


class _Transient(Exception):
    """Internal: a failure worth retrying (checksum mismatch, truncated body)."""


def _http_errors():
    import urllib3

    return (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class ObjectStore:
    """Download / upload files and prefixes ("folders") with verification and retries."""

    def __init__(self, settings: StorageSettings | None = None, *, scheme: str = "s3", retries: int = 4,
                 backoff: float = 0.5, part_size: int = DEFAULT_PART_SIZE, client=None,
                 sleep: Callable[[float], None] = time.sleep):
        if part_size < MIN_PART_SIZE:
            raise StorageError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes (5 MiB)")
        self.settings = settings or StorageSettings.from_env(scheme)
        self.retries = retries
        self.backoff = backoff
        self.part_size = part_size
        self._sleep = sleep
        self._client = client

    # -- client ------------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            try:
                import urllib3
                from minio import Minio
            except ImportError:
                raise StorageError("object-store URIs need the `minio` package: pip install minio") from None
            s = self.settings
            # urllib3 retries connection setup only; everything else goes through our own backoff loop,
            # which also covers bodies cut off mid-stream (urllib3 cannot retry those).
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=20, read=120), maxsize=8,
                retries=urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.2,
                                      raise_on_status=False),
                cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or _certifi())
            self._client = Minio(s.endpoint, access_key=s.access_key, secret_key=s.secret_key,
                                 session_token=s.session_token, secure=s.secure, region=s.region,
                                 http_client=http)
        return self._client

    # -- error handling ----------------------------------------------------------------------------
    def _where(self) -> str:
        s = self.settings
        return f"{'https' if s.secure else 'http'}://{s.endpoint}"

    def _permanent(self, err, uri: ObjectURI, action: str) -> StorageError | None:
        """Map an S3 error to a StorageError with the fix, or None when it is worth a retry."""
        from minio.error import S3Error, ServerError, InvalidResponseError

        if isinstance(err, S3Error):
            code = err.code or ""
            if code in ("NoSuchBucket",):
                return StorageError(f"{action} {uri}: bucket '{uri.bucket}' does not exist on {self._where()}; "
                                    "create it or fix the URI")
            if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return StorageError(f"{action} {uri}: no such object on {self._where()}; check the key "
                                    "(for a folder, give its prefix)")
            if code in _CREDENTIAL_CODES:
                hint = ("no credentials are set: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on Kubeflow: the "
                        "object-store Secret the pipeline mounts)") if not self.settings.access_key else (
                        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY / MINIO_SECRET_KEY), "
                        "or the object-store Secret the pipeline mounts, and the endpoint")
                return StorageError(f"{action} {uri}: {self._where()} rejected the credentials ({code}); {hint}")
            if code in _TRANSIENT_CODES:
                return None
            return StorageError(f"{action} {uri}: the object store answered {code}: {err.message}")
        if isinstance(err, ServerError):
            return None if err.status_code >= 500 or err.status_code == 429 else StorageError(
                f"{action} {uri}: HTTP {err.status_code} from {self._where()}")
        if isinstance(err, InvalidResponseError):
            return StorageError(f"{action} {uri}: {self._where()} did not answer like an S3 server ({err}); check "
                                "S3_ENDPOINT / MINIO_ENDPOINT")
        return None

    def _retry(self, action: str, uri: ObjectURI, fn: Callable[[], object]):
        from minio.error import MinioException

        attempt = 0
        while True:
            try:
                return fn()
            except StorageError:
                raise
            except (MinioException, _Transient, *_http_errors()) as err:
                permanent = self._permanent(err, uri, action) if isinstance(err, MinioException) else None
                if permanent is not None:
                    raise permanent from None
                attempt += 1
                if attempt > self.retries:
                    raise TransientStorageError(f"{action} {uri} failed after {attempt} attempts against {self._where()}: "
                                       f"{type(err).__name__}: {_short(err)}. Check the endpoint and network, "
                                       "then run again") from None
                delay = self.backoff * (2 ** (attempt - 1)) * (1 + 0.25 * random.random())
                log.warning("%s %s: %s (%s); retry %d/%d in %.1f s", action, uri, type(err).__name__,
                            _short(err), attempt, self.retries, delay)
                self._sleep(delay)

    # -- listing -----------------------------------------------------------------------------------
    def _stat(self, uri: ObjectURI):
        from minio.error import S3Error

        try:
            return self.client.stat_object(uri.bucket, uri.key)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise

    def list(self, uri: str | ObjectURI) -> list[str]:
        """Keys under a prefix (recursive), relative to it."""
        u = parse_uri(uri) if isinstance(uri, str) else uri
        prefix = u.key.rstrip("/") + "/" if u.key else ""

        def run():
            if not self.client.bucket_exists(u.bucket):
                raise StorageError(f"listing {u}: bucket '{u.bucket}' does not exist on {self._where()}; "
                                   "create it or fix the URI")
            return [o.object_name[len(prefix):] for o in self.client.list_objects(u.bucket, prefix=prefix,
                                                                                 recursive=True)
                    if not o.is_dir]
        return self._retry("listing", u, run)

    def exists(self, uri: str) -> bool:
        u = parse_uri(uri)
        return self._retry("checking", u, lambda: self._stat(u) is not None) or bool(self.list(u))

    # -- download ----------------------------------------------------------------------------------
    def download(self, uri: str, dest) -> Path:
        """Download an object to the file `dest`, or a prefix into the folder `dest`. Returns `dest`."""
        u = parse_uri(uri)
        dest = Path(dest)
        stat = self._retry("downloading", u, lambda: self._stat(u)) if u.key and not u.key.endswith("/") else None
        if stat is not None:
            self._download_file(u, dest, stat)
            return dest
        keys = self.list(u)
        if not keys:
            raise StorageError(f"downloading {u}: no object and no folder (prefix) of that name on {self._where()}; "
                               "check the URI")
        dest.mkdir(parents=True, exist_ok=True)
        for rel in keys:
            target = _safe_join(dest, rel, u)
            self._download_file(u.child(rel), target, None)
        return dest

    def _download_file(self, u: ObjectURI, dest: Path, stat) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)

        def run():
            st = stat if stat is not None else self._stat(u)
            if st is None:
                raise StorageError(f"downloading {u}: no such object on {self._where()}; check the key")
            expected = _meta(st.metadata, SHA256_META)
            sweep_stale(dest)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".part", dir=dest.parent)
            as_if_created(tmp)
            h, size = hashlib.sha256(), 0
            response = None
            try:
                response = self.client.get_object(u.bucket, u.key)
                with os.fdopen(fd, "wb") as f:
                    for chunk in response.stream(_CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
                if st.size is not None and size != st.size:
                    raise _Transient(f"got {size} bytes, expected {st.size}")
                if expected and h.hexdigest() != expected:
                    raise _Transient(f"sha256 mismatch: got {h.hexdigest()}, the object's metadata says {expected}")
                os.replace(tmp, dest)
            except OSError as err:
                full = disk_full(err, dest)
                if full is not None:
                    raise full from err  # not worth a retry: the disk stays full
                raise
            finally:
                if response is not None:
                    response.close()
                    response.release_conn()
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if not expected:
                log.debug("%s has no sha256 metadata (written by another tool); verified its size only", u)
        self._retry("downloading", u, run)

    # -- upload ------------------------------------------------------------------------------------
    def upload(self, src, uri: str) -> list[str]:
        """Upload a file to the key `uri`, or a folder's files under the prefix `uri`. Returns the URIs."""
        src = Path(src)
        u = parse_uri(uri)
        if not src.exists():
            raise StorageError(f"uploading {src}: it does not exist")
        self._require_bucket(u)
        if src.is_file():
            if not u.key or u.key.endswith("/"):
                u = u.child(src.name)
            self._upload_file(src, u)
            return [str(u)]
        out = []
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src).as_posix()
            target = u.child(rel)
            self._upload_file(path, target)
            out.append(str(target))
        return out

    def _require_bucket(self, u: ObjectURI) -> None:
        if not self._retry("checking", u, lambda: self.client.bucket_exists(u.bucket)):
            raise StorageError(f"uploading to {u}: bucket '{u.bucket}' does not exist on {self._where()}; "
                               "create it (mc mb / aws s3 mb) or fix the URI")

    def _upload_file(self, path: Path, u: ObjectURI) -> None:
        from .model_io import sha256_file

        digest, size = sha256_file(path), path.stat().st_size

        def run():
            self.client.fput_object(u.bucket, u.key, str(path), metadata={SHA256_META: digest},
                                    part_size=self.part_size, num_parallel_uploads=1)
            st = self._stat(u)
            if st is None or st.size != size:
                raise _Transient(f"after upload the object has {getattr(st, 'size', None)} bytes, expected {size}")
            stored = _meta(st.metadata, SHA256_META)
            if stored and stored != digest:
                raise _Transient(f"after upload the object's sha256 is {stored}, expected {digest}")
        self._retry("uploading", u, run)


def _meta(metadata, name: str) -> Optional[str]:
    if not metadata:
        return None
    for key, value in metadata.items():
        k = key.lower()
        if k in (f"x-amz-meta-{name}", name):
            return value
    return None


def _short(err) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text[:300]


def _certifi():
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover - minio depends on certifi
        return None


def _safe_join(root: Path, rel: str, u: ObjectURI) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(rel).is_absolute():
        raise StorageError(f"downloading {u}: refusing key {rel!r}, which points outside the target folder")
    target = root.joinpath(*parts)
    if not str(target.resolve()).startswith(str(root.resolve()) + os.sep):
        raise StorageError(f"downloading {u}: refusing key {rel!r}, which points outside the target folder")
    return target


def _store(uri: str, store: ObjectStore | None) -> ObjectStore:
    return store or ObjectStore(scheme=parse_uri(uri).scheme)


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOCOMPRESS_CACHE") or Path.home() / ".cache" / "autocompress") / "objects"


def fetch(uri, dest=None, *, store: ObjectStore | None = None) -> Path:
    """Make `uri` available locally and return its path.

    A local path is returned as is (when `dest` is None) or copied to `dest`. A remote file or prefix is
    downloaded into `dest`, or into a per-URI cache folder (`$AUTOCOMPRESS_CACHE`, default
    ~/.cache/autocompress) that is written atomically and re-downloaded on every call, so a changed
    object is never served stale.
    """
    if not is_remote(uri):
        src = Path(uri)
        if not src.exists():
            raise StorageError(f"{uri} does not exist")
        if dest is None:
            return src
        dest = Path(dest)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        return dest
    from .atomic import atomic_dir

    s = _store(uri, store)
    u = parse_uri(uri)
    if dest is None:
        digest = hashlib.sha256(f"{s.settings.endpoint}/{u}".encode()).hexdigest()[:16]
        dest = cache_dir() / f"{u.bucket}-{digest}"
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        got = s.download(uri, Path(tmp) / "_object")
        if got.is_dir():  # a prefix: its files become the folder's content
            for child in got.iterdir():
                os.replace(child, Path(tmp) / child.name)
            got.rmdir()
        else:  # a single object: keep its name
            os.replace(got, Path(tmp) / PurePosixPath(u.key).name)
    return dest


def publish(src, uri: str, *, store: ObjectStore | None = None) -> list[str]:
    """Copy a local file or folder to `uri` (object store or a local folder). Returns what was written."""
    src = Path(src)
    if is_remote(uri):
        return _store(uri, store).upload(src, uri)
    dest = Path(uri)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return [str(p) for p in sorted(dest.rglob("*")) if p.is_file()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    return [str(dest)]

