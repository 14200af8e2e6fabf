"""A local HTTP fake of the KFP v2beta1 REST endpoints `autocompress schedule --sync` calls: experiments,
pipelines, pipeline versions, recurring runs (list with pagination, create, delete, enable, disable).
`fail` injects an HTTP error on the n-th matching call; `calls` records every request."""
from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/apis/v2beta1"


class FakeKFP:
    def __init__(self, page_size_cap: int = 2):
        self.experiments: list[dict] = []
        self.pipelines: list[dict] = []
        self.versions: dict[str, list[dict]] = {}
        self.runs: list[dict] = []
        self.calls: list[tuple[str, str]] = []
        self.auth: list[str | None] = []  # the Authorization header of each request
        self.fail: dict[tuple[str, str], tuple[int, int]] = {}  # (method, path) -> (nth call, status)
        self.page_size_cap = page_size_cap  # small pages: the client must follow next_page_token
        self._ids = itertools.count(1)
        self._seen: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def add_pipeline(self, display_name: str, versions: list[str]) -> str:
        pid = self.new_id("p")
        self.pipelines.append({"pipeline_id": pid, "display_name": display_name})
        self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": self.new_id("v"), "display_name": v,
                               "created_at": f"2026-01-{i + 1:02d}T00:00:00Z"} for i, v in enumerate(versions)]
        return pid

    def add_experiment(self, name: str) -> str:
        eid = self.new_id("e")
        self.experiments.append({"experiment_id": eid, "display_name": name})
        return eid

    def add_run(self, display_name: str, description: str = "", mode: str = "ENABLE") -> str:
        rid = self.new_id("r")
        self.runs.append({"recurring_run_id": rid, "display_name": display_name, "description": description,
                          "mode": mode})
        return rid

    def by_name(self, display_name: str) -> list[dict]:
        return [r for r in self.runs if r["display_name"] == display_name]

    # -- HTTP
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: dict):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _serve(self, method: str):
                url = urllib.parse.urlsplit(self.path)
                path = url.path[len(PREFIX):] if url.path.startswith(PREFIX) else None
                query = dict(urllib.parse.parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                with fake.lock:
                    fake.calls.append((method, url.path))
                    fake.auth.append(self.headers.get("Authorization"))
                    if path is None:
                        return self._reply(404, {"error": "not found", "code": 5, "message": "not found"})
                    key = (method, _pattern(path))
                    fake._seen[key] = fake._seen.get(key, 0) + 1
                    if key in fake.fail and fake.fail[key][0] == fake._seen[key]:
                        status = fake.fail[key][1]
                        return self._reply(status, {"error": "injected", "code": 13,
                                                    "message": f"injected failure {status} on {method} {path}"})
                    status, out = fake.route(method, path, query, body)
                return self._reply(status, out)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

        return Handler

    def _page(self, items: list[dict], key: str, query: dict) -> dict:
        start = int(query.get("page_token") or 0)
        size = min(int(query.get("page_size") or 10), self.page_size_cap)
        out = {key: items[start:start + size], "total_size": len(items)}
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if parts == ["experiments"]:
            if method == "GET":
                return 200, self._page(self.experiments, "experiments", query)
            exp = {"experiment_id": self.new_id("e"), "display_name": body["display_name"]}
            self.experiments.append(exp)
            return 200, exp
        if parts == ["pipelines"] and method == "GET":
            return 200, self._page(self.pipelines, "pipelines", query)
        if len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions" and method == "GET":
            if parts[1] not in self.versions:
                return 404, {"message": f"pipeline {parts[1]} not found"}
            versions = sorted(self.versions[parts[1]], key=lambda v: v["created_at"],
                              reverse=query.get("sort_by") == "created_at desc")
            return 200, self._page(versions, "pipeline_versions", query)
        if parts == ["recurringruns"]:
            if method == "GET":
                return 200, self._page(self.runs, "recurring_runs", query)
            if not any(e["experiment_id"] == body.get("experiment_id") for e in self.experiments):
                return 400, {"message": f"experiment {body.get('experiment_id')} does not exist"}
            run = {**body, "recurring_run_id": self.new_id("r")}
            self.runs.append(run)
            return 200, run
        if len(parts) == 2 and parts[0] == "recurringruns":
            rid, _, verb = parts[1].partition(":")
            match = [r for r in self.runs if r["recurring_run_id"] == rid]
            if not match:
                return 404, {"message": f"recurring run {rid} not found"}
            if method == "DELETE":
                self.runs.remove(match[0])
                return 200, {}
            if method == "POST" and verb in ("enable", "disable"):
                match[0]["mode"] = "ENABLE" if verb == "enable" else "DISABLE"
                return 200, {}
        return 404, {"message": f"no route {method} {path}"}


def _pattern(path: str) -> str:
    """/recurringruns/r-7:disable -> /recurringruns/{id}:disable (failure keys ignore ids)."""
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] in ("recurringruns", "pipelines"):
        rid, sep, verb = parts[1].partition(":")
        parts[1] = "{id}" + sep + verb
    return "/" + "/".join(parts)
