#!/usr/bin/env python3
"""Regenerate tests/fixtures/standardwebhooks_vectors.json.

Signs a fixed set of messages with both Standard Webhooks reference libraries
(PyPI `standardwebhooks`, in-process and via sign.py; npm `standardwebhooks`,
via sign.mjs) and cross-checks everything before writing the fixture:

* the Python and npm signatures for the same input must be identical, and equal
  to an independent HMAC-SHA256 computed here with hashlib;
* every vector made by one library must pass the *other* library's
  Webhook.verify (clock frozen at the vector's timestamp), and a tampered body
  or a wrong secret must be rejected by it;
* the example from the Standard Webhooks spec must give its published value.

Any disagreement aborts with a non-zero exit and nothing is written.

Usage (from anywhere):
    pip install standardwebhooks            # Python library
    (cd tests/support && npm ci)            # npm library, from package-lock.json
    python3 tests/support/gen_vectors.py

Fresh random secrets are drawn on every run, so the fixture changes each time
it is regenerated; that is expected.
"""
import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import standardwebhooks.webhooks as pywh
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SUPPORT = Path(__file__).resolve().parent
FIXTURE = SUPPORT.parent / "fixtures" / "standardwebhooks_vectors.json"

# Published example (Standard Webhooks spec / reference library tests).
SPEC_EXAMPLE = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "msg_id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": 1614265330,
    "body": '{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}

# 2026-11-28T07:00:00Z
TS = 1795849200


def die(msg: str) -> "None":
    sys.stderr.write(f"gen_vectors.py: FAIL: {msg}\n")
    sys.exit(1)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_msg_id() -> str:
    return "msg_" + secrets.token_hex(12)


def versions() -> "tuple[str, str]":
    py = metadata.version("standardwebhooks")
    pkg = SUPPORT / "node_modules" / "standardwebhooks" / "package.json"
    if not pkg.is_file():
        die(f"{pkg} missing: run `npm ci` in {SUPPORT}")
    npm = json.loads(pkg.read_text(encoding="utf-8"))["version"]
    return f"python-standardwebhooks {py}", f"npm-standardwebhooks {npm}"


def independent_sig(secret: str, msg_id: str, ts: int, body: str) -> str:
    """Plain spec computation, no library: HMAC-SHA256(base64(secret sans whsec_))."""
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    mac = hmac.new(key, f"{msg_id}.{ts}.{body}".encode("utf-8"), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def run_script(argv: "list[str]", body: str) -> str:
    proc = subprocess.run(argv, input=body.encode("utf-8"), capture_output=True, cwd=SUPPORT)
    if proc.returncode != 0:
        die(f"{argv[:2]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8")


def sign_py(secret: str, msg_id: str, ts: int, body: str) -> str:
    direct = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body)
    via_script = run_script([sys.executable, str(SUPPORT / "sign.py"), secret, msg_id, str(ts)], body)
    if direct != via_script:
        die(f"sign.py output {via_script!r} != library call {direct!r}")
    return direct


def sign_npm(secret: str, msg_id: str, ts: int, body: str) -> str:
    return run_script(["node", str(SUPPORT / "sign.mjs"), secret, msg_id, str(ts)], body)


class _FrozenDatetime(datetime):
    frozen: float = 0.0

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return datetime.fromtimestamp(cls.frozen, tz=tz)


def py_verify(secret: str, msg_id: str, ts: int, body: str, header: str) -> bool:
    """Python library's Webhook.verify with its clock frozen at `ts`."""
    _FrozenDatetime.frozen = float(ts)
    saved = pywh.datetime
    pywh.datetime = _FrozenDatetime
    try:
        Webhook(secret).verify(
            body,
            {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": header},
            json_parse=False,
        )
        return True
    except WebhookVerificationError:
        return False
    finally:
        pywh.datetime = saved


# Runs in node with cwd = tests/support so require() finds node_modules.
# Reads a JSON list of checks on stdin, prints a JSON list of booleans.
_NPM_VERIFY_JS = r"""
const { Webhook, WebhookVerificationError } = require("standardwebhooks");
const checks = JSON.parse(require("fs").readFileSync(0, "utf8"));
const realNow = Date.now;
const out = checks.map((c) => {
  Date.now = () => c.now * 1000;
  try {
    new Webhook(c.secret).verify(c.body, {
      "webhook-id": c.msg_id,
      "webhook-timestamp": String(c.timestamp),
      "webhook-signature": c.signature,
    }, { jsonParse: false });
    return true;
  } catch (e) {
    if (e instanceof WebhookVerificationError) return false;
    throw e;
  } finally {
    Date.now = realNow;
  }
});
process.stdout.write(JSON.stringify(out));
"""


def npm_verify_many(checks: "list[dict]") -> "list[bool]":
    proc = subprocess.run(
        ["node", "-e", _NPM_VERIFY_JS],
        input=json.dumps(checks).encode("utf-8"),
        capture_output=True,
        cwd=SUPPORT,
    )
    if proc.returncode != 0:
        die(f"npm verify helper exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    res = json.loads(proc.stdout)
    if len(res) != len(checks):
        die("npm verify helper returned the wrong number of results")
    return res


def main() -> None:
    py_label, npm_label = versions()

    main_secret = new_secret()
    other_secret = new_secret()
    old_secret = new_secret()
    new_secret_ = new_secret()

    plain = '{"type":"settings.updated","timestamp":"2026-11-28T07:00:00Z","data":{"admin_2fa_allowed":true}}'
    utf8 = (
        '{"type":"user.updated","timestamp":"2026-11-28T07:00:01Z",'
        '"data":{"name":"Jürgen Ø 東京","note":"naïve café – ✓ 🙂"}}'
    )
    spaced = (
        "{\n"
        '  "type" : "settings.updated",\n'
        '  "timestamp": "2026-11-28T07:00:02Z",\n'
        '\t"data": { "admin_2fa_allowed" : false ,  "note": "two  spaces" }\n'
        "}\n"
    )
    other = '{"type":"settings.updated","timestamp":"2026-11-28T07:00:03Z","data":{"admin_2fa_allowed":false}}'
    rot_py = '{"type":"secret.rotated","timestamp":"2026-11-28T07:00:04Z","data":{"by":"python"}}'
    rot_npm = '{"type":"secret.rotated","timestamp":"2026-11-28T07:00:05Z","data":{"by":"npm"}}'

    # (case, secret, msg_id, timestamp, body)
    singles = [
        ("spec-example", SPEC_EXAMPLE["secret"], SPEC_EXAMPLE["msg_id"], SPEC_EXAMPLE["timestamp"], SPEC_EXAMPLE["body"]),
        ("plain", main_secret, new_msg_id(), TS, plain),
        ("non-ascii-utf8", main_secret, new_msg_id(), TS + 1, utf8),
        ("whitespace-newlines", main_secret, new_msg_id(), TS + 2, spaced),
        ("other-secret", other_secret, new_msg_id(), TS + 3, other),
    ]

    vectors: "list[dict]" = []
    for label, signer in ((py_label, sign_py), (npm_label, sign_npm)):
        for case, secret, msg_id, ts, body in singles:
            vectors.append({
                "library": label, "case": case, "secret": secret, "msg_id": msg_id,
                "timestamp": ts, "body": body, "signature": signer(secret, msg_id, ts, body),
            })

    # Key rotation: header carries signatures made with the old and the new secret.
    # python one is "old new", npm one is "new old" so both orders are covered.
    for label, signer, body, ts, order in (
        (py_label, sign_py, rot_py, TS + 4, "old-new"),
        (npm_label, sign_npm, rot_npm, TS + 5, "new-old"),
    ):
        msg_id = new_msg_id()
        s_old = signer(old_secret, msg_id, ts, body)
        s_new = signer(new_secret_, msg_id, ts, body)
        header = f"{s_old} {s_new}" if order == "old-new" else f"{s_new} {s_old}"
        vectors.append({
            "library": label, "case": f"rotation-{order}", "secret": new_secret_,
            "other_secret": old_secret, "msg_id": msg_id, "timestamp": ts, "body": body,
            "signature": header,
        })

    # ---- cross-checks -------------------------------------------------------
    by_input: "dict[tuple, set]" = {}
    for v in vectors:
        secret_list = [v["secret"]] + ([v["other_secret"]] if "other_secret" in v else [])
        expected = {independent_sig(s, v["msg_id"], v["timestamp"], v["body"]) for s in secret_list}
        got = set(v["signature"].split(" "))
        if got != expected:
            die(f"{v['library']} {v['case']}: header {v['signature']!r} != independent HMAC {expected!r}")
        if "other_secret" not in v:
            by_input.setdefault((v["case"], v["secret"], v["msg_id"], v["timestamp"], v["body"]), set()).add(v["signature"])
        if v["case"] == "spec-example" and v["signature"] != SPEC_EXAMPLE["signature"]:
            die(f"{v['library']}: spec example gave {v['signature']!r}, published {SPEC_EXAMPLE['signature']!r}")
    for key, sigs in by_input.items():
        if len(sigs) != 1:
            die(f"python and npm disagree on case {key[0]}: {sigs!r}")

    # Each library verifies the other's vectors (and rejects tampering).
    wrong_secret = new_secret()
    npm_checks: "list[tuple[str, dict, bool]]" = []
    for v in vectors:
        secrets_ok = [v["secret"]] + ([v["other_secret"]] if "other_secret" in v else [])
        cases = [(f"secret {s[:12]}…", dict(v, secret=s), True) for s in secrets_ok]
        cases.append(("tampered body", dict(v, body=v["body"] + " "), False))
        cases.append(("wrong secret", dict(v, secret=wrong_secret), False))
        for what, c, want in cases:
            if v["library"] == npm_label:
                ok = py_verify(c["secret"], c["msg_id"], c["timestamp"], c["body"], c["signature"])
                if ok != want:
                    die(f"python verify of {v['library']} {v['case']} ({what}) gave {ok}, expected {want}")
            else:
                npm_checks.append((f"{v['case']} ({what})", dict(c, now=c["timestamp"]), want))
    results = npm_verify_many([c for _, c, _ in npm_checks])
    for (what, _, want), ok in zip(npm_checks, results):
        if ok != want:
            die(f"npm verify of {py_label} {what} gave {ok}, expected {want}")

    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    tmp = FIXTURE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(vectors, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, FIXTURE)
    print(f"wrote {len(vectors)} vectors to {FIXTURE} ({py_label}, {npm_label}); "
          f"all agree, cross-verified ({len(npm_checks)} npm verify checks)")


if __name__ == "__main__":
    main()
