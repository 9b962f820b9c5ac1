"""A runledger worker in Python: the Redis contract plus the HTTP worker endpoints.

Takes envelopes from jobs:default:queue (BRPOP), reports start, runs `noop`, reports
complete (or fail for task types it does not know). Only redis-py and the standard library.
"""
import json
import os
import sys
import urllib.request
import uuid

import redis

COMMAND_URL = os.environ["RUNLEDGER_COMMAND_URL"].rstrip("/")
TOKEN = os.environ["RUNLEDGER_WORKER_TOKEN"]
MAX_JOBS = int(os.environ.get("MAX_JOBS", "0"))  # 0: run forever
WORKER_ID = "py-" + uuid.uuid4().hex[:12]


def report(job_id, op, body):
    req = urllib.request.Request(
        f"{COMMAND_URL}/v1/worker/jobs/{job_id}/{op}",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code


def main():
    r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    done = 0
    while MAX_JOBS == 0 or done < MAX_JOBS:
        item = r.brpop("jobs:default:queue", timeout=1)
        if item is None:
            continue
        env = json.loads(item[1])
        job, attempt = env["job_id"], env["attempt"]
        if report(job, "start", {"attempt": attempt, "worker_id": WORKER_ID}) != 200:
            continue
        if env["task_type"] == "noop":
            report(job, "complete", {"attempt": attempt, "result": {"by": "python"}})
        else:
            report(job, "fail", {"attempt": attempt, "error": "unsupported task type", "retryable": False})
        done += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
