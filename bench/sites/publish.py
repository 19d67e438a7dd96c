"""Publishes a one-file site to `default`/production through the real API: a deploy
(a build of the repository), a fake agent that claims its job, uploads dist/index.html
and reports it passed; waits for the deployment to be deployed. Standard library only."""
import hashlib, json, sys, time, urllib.request

api, admin, repo = sys.argv[1], sys.argv[2], sys.argv[3]

def call(method, path, body=None, token=admin, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(api + path, data=data, method=method)
    request.add_header("authorization", "Bearer " + token)
    if body is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request) as response:
        text = response.read()
        return json.loads(text) if text else None

call("POST", "/api/v1/projects", {"slug": "default", "name": "default"})
call("PUT", "/api/v1/projects/default/repo", {"repo": repo})
agent_token = call("POST", "/api/v1/agent-tokens", {"name": "bench"})["token"]
agent = call("POST", "/api/v1/agent/register", {"name": "bench", "concurrency": 1, "executor": "process"}, token=agent_token)["agentId"]
started = call("POST", "/api/v1/projects/default/environments/production/deploy", {})
job = call("POST", "/api/v1/agent/claim", {"agentId": agent, "waitSecs": 10}, token=agent_token)
page = b"<!doctype html><title>bench</title><p>" + b"x" * 512 + b"</p>\n"
query = "agentId=%d&attempt=%d" % (agent, job["attempt"])
upload = call("POST", "/api/v1/agent/jobs/%d/artifacts?%s" % (job["jobId"], query),
              {"path": "dist/index.html", "size": len(page), "sha256": hashlib.sha256(page).hexdigest()}, token=agent_token)
if not upload["complete"]:
    call("PUT", "/api/v1/agent/jobs/%d/artifacts/uploads/%s?%s&offset=0" % (job["jobId"], upload["uploadId"], query), raw=page, token=agent_token)
call("POST", "/api/v1/agent/jobs/%d/finish" % job["jobId"], {"agentId": agent, "attempt": job["attempt"], "state": "passed", "exitCode": 0}, token=agent_token)
for _ in range(200):
    deployment = call("GET", "/api/v1/deployments/%d" % started["deployment"]["id"])
    if deployment["status"] == "deployed":
        print("published:", deployment["url"])
        break
    time.sleep(0.05)
else:
    sys.exit("the deployment never became deployed: %s" % deployment)
