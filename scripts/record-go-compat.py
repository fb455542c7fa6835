#!/usr/bin/env python3
"""Record the older Go server's REST answers, case by case, as fixtures for tests/suites/rest_compat.rs.

The Go server (github.com/SweetRetry/volcengine-ai) is built and run outside this repository
(its code is never committed here); see docs/rest-compat.md for how. This script drives one
running instance through the same requests the contract test replays, and writes what it
answered:

    scripts/record-go-compat.py --version v2     --base http://127.0.0.1:18081
    scripts/record-go-compat.py --version latest --base http://127.0.0.1:18082

writes tests/fixtures/go-compat/<version>.json: the server's commit and, per case, the request
(method, path and body with ${name} placeholders for the ids earlier cases bound), the status
code and the JSON body it answered. `bind` names the ids a case's answer yields (a JSON
pointer into it) for later cases; `poll` repeats a request until it answers the given status
(the Go v2 result route answers 202 at random, the latest one while the task runs); `fresh`
marks a request sent right after the task it reads was created (the task is still queued).

Only the Python standard library is needed.
"""

import argparse
import json
import random
import string
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

COMMITS = {"v2": "7f4c83f", "latest": "df370a4"}
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "go-compat"

UNKNOWN_HEX = "00000000000000000000abcd"
MALFORMED = "not-an-id"
SEEDREAM3 = "doubao-seedream-3-0-t2i-250415"


def case(name, method, path, body=None, raw=None, bind=None, poll=None, fresh=False,
         window=None):
    c = {"name": name, "method": method, "path": path}
    if body is not None:
        c["body"] = body
    if raw is not None:
        c["raw_body"] = raw
    if bind:
        c["bind"] = bind
    if poll:
        c["poll"] = poll
    if fresh:
        c["fresh"] = True
    if window is not None:
        c["window"] = window
    return c


def user_cases():
    """The user routes, the same on both versions."""
    return [
        case("health", "GET", "/health"),
        case("unknown route", "GET", "/api/v1/nope"),
        case("user create", "POST", "/api/v1/users",
             {"email": "alice-${run}@example.com", "name": "Alice"}, bind={"user": "/data/id"}),
        case("user create second", "POST", "/api/v1/users",
             {"email": "bob-${run}@example.com", "name": "Bob"}, bind={"user2": "/data/id"}),
        case("user create duplicate email", "POST", "/api/v1/users",
             {"email": "alice-${run}@example.com", "name": "Alice Again"}),
        case("user create missing email", "POST", "/api/v1/users", {"name": "Carol"}),
        case("user create missing name", "POST", "/api/v1/users",
             {"email": "carol-${run}@example.com"}),
        case("user create empty object", "POST", "/api/v1/users", {}),
        case("user create bad email", "POST", "/api/v1/users",
             {"email": "not-an-email", "name": "Carol"}),
        case("user create name too short", "POST", "/api/v1/users",
             {"email": "carol-${run}@example.com", "name": "C"}),
        case("user create name too long", "POST", "/api/v1/users",
             {"email": "carol-${run}@example.com", "name": "C" * 51}),
        case("user create email too long", "POST", "/api/v1/users",
             {"email": "c" * 95 + "@example.com", "name": "Carol"}),
        case("user create malformed json", "POST", "/api/v1/users", raw='{"email": '),
        case("user create empty body", "POST", "/api/v1/users", raw=""),
        case("user get", "GET", "/api/v1/users/${user}"),
        case("user get unknown", "GET", "/api/v1/users/" + UNKNOWN_HEX),
        case("user get malformed id", "GET", "/api/v1/users/" + MALFORMED),
        case("user by email", "GET", "/api/v1/users?email=alice-${run}@example.com"),
        case("user by email unknown", "GET", "/api/v1/users?email=nobody-${run}@example.com"),
        case("user update name", "PUT", "/api/v1/users/${user}", {"name": "Alice B"}),
        case("user update email", "PUT", "/api/v1/users/${user}",
             {"email": "alice2-${run}@example.com"}),
        case("user update empty object", "PUT", "/api/v1/users/${user}", {}),
        case("user update bad email", "PUT", "/api/v1/users/${user}", {"email": "nope"}),
        case("user update name too short", "PUT", "/api/v1/users/${user}", {"name": "A"}),
        case("user update malformed json", "PUT", "/api/v1/users/${user}", raw="{"),
        case("user update unknown", "PUT", "/api/v1/users/" + UNKNOWN_HEX, {"name": "Nobody"}),
        case("user update malformed id", "PUT", "/api/v1/users/" + MALFORMED,
             {"name": "Nobody"}),
        case("user get after update", "GET", "/api/v1/users/${user}"),
        case("user delete unknown", "DELETE", "/api/v1/users/" + UNKNOWN_HEX),
        case("user delete malformed id", "DELETE", "/api/v1/users/" + MALFORMED),
        case("user create to delete", "POST", "/api/v1/users",
             {"email": "dave-${run}@example.com", "name": "Dave"}, bind={"user3": "/data/id"}),
        case("user delete", "DELETE", "/api/v1/users/${user3}"),
        case("user get deleted", "GET", "/api/v1/users/${user3}"),
    ]


def v2_task_cases():
    img = "/api/v1/ai/image/task"
    return [
        case("image task create", "POST", img,
             {"prompt": "一只可爱的小猫咪在花园里玩耍", "user_id": "${user}"},
             bind={"task": "/data/system_task_id/id", "ptask": "/data/task_id"}),
        case("image task result completed", "GET", "/api/v1/ai/image/result/${ptask}",
             poll=200),
        case("image task create with options", "POST", img,
             {"prompt": "a red fox", "user_id": "${user}", "model": "doubao-seedream-3.0-t2i",
              "size": "1024x1024", "quality": "standard", "style": "photo", "n": 1},
             bind={"task2": "/data/system_task_id/id", "ptask2": "/data/task_id"}),
        case("image task result processing", "GET", "/api/v1/ai/image/result/${ptask2}",
             fresh=True, window="v2-processing"),
        case("image task opaque user id", "POST", img,
             {"prompt": "a lighthouse", "user_id": "user_123"},
             bind={"task3": "/data/system_task_id/id"}),
        case("image task missing prompt", "POST", img, {"user_id": "${user}"}),
        case("image task missing user_id", "POST", img, {"prompt": "a cat"}),
        case("image task empty object", "POST", img, {}),
        case("image task malformed json", "POST", img, raw='{"prompt": "a cat",'),
        case("image task size no model takes", "POST", img,
             {"prompt": "a cat", "user_id": "${user}", "size": "13x7"}),
        case("image result unknown id", "GET", "/api/v1/ai/image/result/volcengine_img_1",
             poll=200),
        case("generic task create", "POST", "/api/v1/ai/tasks",
             {"type": "image_generation", "model": "doubao-seedream-3.0-t2i",
              "input": {"prompt": "a boat", "size": "1024x1024"}, "user_id": "${user}"},
             bind={"gtask": "/data/id"}),
        case("generic task create delayed", "POST", "/api/v1/ai/tasks",
             {"type": "image_generation", "model": "doubao-seedream-3.0-t2i",
              "input": {"prompt": "a boat later"}, "user_id": "${user}", "delay": 60},
             bind={"dtask": "/data/id"}),
        case("generic task get delayed", "GET", "/api/v1/tasks/${dtask}"),
        case("generic task text type", "POST", "/api/v1/ai/tasks",
             {"type": "text_generation", "model": "doubao-seed-1-6",
              "input": {"prompt": "hello"}, "user_id": "${user}"}),
        case("generic task missing model", "POST", "/api/v1/ai/tasks",
             {"type": "image_generation", "input": {"prompt": "a boat"},
              "user_id": "${user}"}),
        case("generic task missing type", "POST", "/api/v1/ai/tasks",
             {"model": "doubao-seedream-3.0-t2i", "input": {"prompt": "a boat"},
              "user_id": "${user}"}),
        case("generic task missing input", "POST", "/api/v1/ai/tasks",
             {"type": "image_generation", "model": "doubao-seedream-3.0-t2i",
              "user_id": "${user}"}),
        case("generic task missing user_id", "POST", "/api/v1/ai/tasks",
             {"type": "image_generation", "model": "doubao-seedream-3.0-t2i",
              "input": {"prompt": "a boat"}}),
        case("generic task malformed json", "POST", "/api/v1/ai/tasks", raw="[1,"),
        case("ai task get", "GET", "/api/v1/ai/tasks/${gtask}"),
        case("ai task get unknown", "GET", "/api/v1/ai/tasks/" + UNKNOWN_HEX),
        case("ai task get malformed id", "GET", "/api/v1/ai/tasks/" + MALFORMED),
        case("task get", "GET", "/api/v1/tasks/${task}"),
        case("task get unknown", "GET", "/api/v1/tasks/" + UNKNOWN_HEX),
        case("task get malformed id", "GET", "/api/v1/tasks/" + MALFORMED),
        case("user tasks", "GET", "/api/v1/tasks/user/${user}"),
        case("user tasks paged", "GET", "/api/v1/tasks/user/${user}?limit=1&offset=1"),
        case("user tasks bad paging", "GET", "/api/v1/tasks/user/${user}?limit=abc&offset=-3"),
        case("user tasks opaque user", "GET", "/api/v1/tasks/user/user_123"),
        case("user tasks unknown user", "GET", "/api/v1/tasks/user/" + UNKNOWN_HEX),
        case("task cancel", "POST", "/api/v1/tasks/${dtask}/cancel"),
        case("task get cancelled", "GET", "/api/v1/tasks/${dtask}"),
        case("task cancel again", "POST", "/api/v1/tasks/${dtask}/cancel"),
        case("task cancel unknown", "POST", "/api/v1/tasks/" + UNKNOWN_HEX + "/cancel"),
        case("task cancel malformed id", "POST", "/api/v1/tasks/" + MALFORMED + "/cancel"),
        case("task retry cancelled", "POST", "/api/v1/tasks/${dtask}/retry"),
        case("task retry unknown", "POST", "/api/v1/tasks/" + UNKNOWN_HEX + "/retry"),
        case("queue stats", "GET", "/api/v1/queue/stats"),
        case("task delete", "DELETE", "/api/v1/tasks/${dtask}"),
        case("task get deleted", "GET", "/api/v1/tasks/${dtask}"),
        case("task delete unknown", "DELETE", "/api/v1/tasks/" + UNKNOWN_HEX),
        case("task delete malformed id", "DELETE", "/api/v1/tasks/" + MALFORMED),
    ]


def latest_task_cases():
    img = "/api/v1/ai/image/task"
    ok = {"model": SEEDREAM3, "provider": "volcengine"}
    return [
        case("image task create", "POST", img,
             {"prompt": "一只可爱的小猫咪在花园里玩耍", "user_id": "${user}", **ok},
             bind={"task": "/data/task_id"}),
        case("task result pending", "GET", "/api/v1/ai/task/result/${task}", fresh=True),
        case("task result completed", "GET", "/api/v1/ai/task/result/${task}", poll=200),
        case("image task create failing", "POST", img,
             {"prompt": "a sensitive-content picture", "user_id": "${user}", **ok},
             bind={"ftask": "/data/task_id"}),
        case("task result failed", "GET", "/api/v1/ai/task/result/${ftask}", poll=500),
        case("image task opaque user id", "POST", img,
             {"prompt": "a lighthouse", "user_id": "user_123", **ok}),
        case("image task v2 body (no model, no provider)", "POST", img,
             {"prompt": "a cat", "user_id": "${user}"}),
        case("image task missing provider", "POST", img,
             {"prompt": "a cat", "user_id": "${user}", "model": SEEDREAM3}),
        case("image task missing prompt", "POST", img, {"user_id": "${user}", **ok}),
        case("image task missing user_id", "POST", img, {"prompt": "a cat", **ok}),
        case("image task empty object", "POST", img, {}),
        case("image task malformed json", "POST", img, raw='{"prompt": "a cat",'),
        case("task result unknown", "GET", "/api/v1/ai/task/result/" + UNKNOWN_HEX),
        case("task result malformed id", "GET", "/api/v1/ai/task/result/" + MALFORMED),
        case("user tasks", "GET", "/api/v1/ai/tasks?user_id=${user}"),
        case("user tasks paged", "GET", "/api/v1/ai/tasks?user_id=${user}&limit=1&offset=1"),
        case("user tasks by type", "GET", "/api/v1/ai/tasks?user_id=${user}&type=image"),
        case("user tasks bad paging", "GET",
             "/api/v1/ai/tasks?user_id=${user}&limit=500&offset=x"),
        case("user tasks opaque user", "GET", "/api/v1/ai/tasks?user_id=user_123"),
        case("user tasks unknown user", "GET", "/api/v1/ai/tasks?user_id=" + UNKNOWN_HEX),
        case("user tasks missing user_id", "GET", "/api/v1/ai/tasks"),
        case("task delete", "DELETE", "/api/v1/ai/task/${task}"),
        case("task result after delete", "GET", "/api/v1/ai/task/result/${task}"),
        case("task delete unknown", "DELETE", "/api/v1/ai/task/" + UNKNOWN_HEX),
    ]


def fill(value, ids):
    if isinstance(value, str):
        for k, v in ids.items():
            value = value.replace("${" + k + "}", v)
        return value
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


def send(base, method, path, data):
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, {"non_json_body": raw.decode("utf-8", "replace")}


def pointer(doc, ptr):
    for part in ptr.strip("/").split("/"):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def run_case(base, c, ids):
    path = fill(c["path"], ids)
    data = None
    if "body" in c:
        data = json.dumps(fill(c["body"], ids)).encode()
    elif "raw_body" in c:
        data = c["raw_body"].encode()
    if c.get("window") == "v2-processing":
        # v2's result route answers 202 when the Unix second is a multiple of 3
        while int(time.time()) % 3 != 0:
            time.sleep(0.05)
    for _ in range(60):
        status, body = send(base, c["method"], path, data)
        if not c.get("poll") or status == c["poll"]:
            break
        time.sleep(0.5)
    else:
        sys.exit(f"{c['name']}: never answered {c['poll']} (last {status} {body})")
    for k, ptr in c.get("bind", {}).items():
        ids[k] = str(pointer(body, ptr))
    # the Go servers allow 100 requests a minute per client
    time.sleep(0.65)
    return status, body


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", choices=sorted(COMMITS), required=True)
    ap.add_argument("--base", required=True, help="the running Go server, e.g. http://127.0.0.1:18081")
    a = ap.parse_args()
    run = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    ids = {"run": run}
    cases = user_cases() + (v2_task_cases() if a.version == "v2" else latest_task_cases())
    out = []
    for c in cases:
        status, body = run_case(a.base.rstrip("/"), c, ids)
        print(f"{status} {c['method']} {fill(c['path'], ids)}  [{c['name']}]")
        out.append({**c, "status": status, "response": body})
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "server": "github.com/SweetRetry/volcengine-ai",
        "commit": COMMITS[a.version],
        "version": a.version,
        "recorded_ids": {k: v for k, v in ids.items() if k != "run"},
        "run": run,
        "cases": out,
    }
    (OUT / f"{a.version}.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(out)} cases -> {OUT / (a.version + '.json')}")


if __name__ == "__main__":
    main()
