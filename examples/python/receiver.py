#!/usr/bin/env python3
"""A webhook receiver for spkeeper's notices, in Python with the standard library and the
`standardwebhooks` package.

It does the three things every receiver must do:

1. **Verify** the Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
   `webhook-signature`) over the exact bytes received, with the `whsec_…` secret spkeeper
   signs with. A bad or missing signature, or a timestamp more than five minutes off, is
   refused with 401 and nothing is processed.
2. **Deduplicate** on the notice's `id`. spkeeper delivers at least once: a notice whose 2xx
   answer got lost is sent again, with the same `id`. The first delivery claims the id in a
   SQLite table (a primary key, so two concurrent deliveries cannot both claim it); a later
   one is answered 2xx and not processed again.
3. **Answer fast**: 2xx once the notice is recorded. A failure while processing releases the
   claim and answers 500, so spkeeper retries later.

Configuration (environment):

    SPKEEPER_WEBHOOK_SECRET  the whsec_… secret (required; the same value spkeeper has)
    RECEIVER_ADDR            host:port to listen on (default 127.0.0.1:8090; port 0 = any free port)
    RECEIVER_DB              SQLite file that remembers processed notices (default notices.sqlite3)

Every outcome is printed as one JSON line on standard output (`processed`, `duplicate`,
`rejected`), which is what the repository's test reads.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PATH = "/webhook"
MAX_BODY = 64 * 1024  # spkeeper's notices are a few hundred bytes


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Store:
    """Processed notices, keyed by notice id. One connection, serialised by a lock."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS notices ("
            " id TEXT PRIMARY KEY, type TEXT NOT NULL, grant_id TEXT,"
            " received_at TEXT NOT NULL, body TEXT NOT NULL)"
        )

    def claim(self, notice: dict, body: str) -> bool:
        """Records the notice; False if its id was recorded before (a duplicate)."""
        grant = notice.get("grant") or {}
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO notices (id, type, grant_id, received_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    notice["id"],
                    notice.get("type", ""),
                    grant.get("id"),
                    datetime.now(timezone.utc).isoformat(),
                    body,
                ),
            )
            return cur.rowcount == 1

    def release(self, notice_id: str) -> None:
        """Forgets a claim whose processing failed, so the retry is processed."""
        with self._lock:
            self._db.execute("DELETE FROM notices WHERE id = ?", (notice_id,))


def process(notice: dict) -> str:
    """Your application's work for each notice type; here it only says what it would do."""
    kind = notice.get("type")
    grant = notice.get("grant") or {}
    user = grant.get("user") or {}
    who = user.get("email") or user.get("title") or grant.get("id", "?")
    if kind == "refresh_token.expiring":
        return f"remind {who}: reopen the add-in within {notice.get('days_left')} days ({notice.get('renew_url')})"
    if kind == "refresh_token.expired":
        return f"mark {who} disconnected; ask them to reopen the add-in ({notice.get('renew_url')})"
    if kind == "refresh_token.revoked":
        return f"mark {who} disconnected (access revoked); ask them to reopen the add-in"
    if kind == "refresh_token.renewed":
        return f"clear the reminders for {who}: connected until {notice.get('refresh_token_expires_at')}"
    if kind == "client_secret.expiring":
        return f"page the operators: the add-in's client secret expires {notice.get('client_secret_expires_at')}"
    if kind == "webhook.test":
        return "nothing to do: a connectivity test from spkeeper doctor"
    return f"ignore unknown notice type {kind!r}"


class Handler(BaseHTTPRequestHandler):
    server_version = "spkeeper-example-receiver"
    webhook: Webhook
    store: Store

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # our own JSON lines say what happened

    def answer(self, status: int, payload: dict | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if body:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.path != PATH:
            return self.answer(404, {"error": "not_found"})
        try:
            length = int(self.headers.get("content-length", ""))
        except ValueError:
            return self.answer(411, {"error": "length_required"})
        if length < 0 or length > MAX_BODY:
            return self.answer(413, {"error": "payload_too_large"})
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        webhook_id = headers.get("webhook-id", "")

        # 1. The signature, over the bytes exactly as received (never over re-serialised JSON).
        try:
            notice = self.webhook.verify(raw, headers)
        except (WebhookVerificationError, ValueError) as e:
            # ValueError: a malformed signature header or a body that is not UTF-8 / JSON.
            reason = str(e) if isinstance(e, WebhookVerificationError) else "malformed signature or body"
            log("rejected", status=401, webhook_id=webhook_id, reason=reason)
            return self.answer(401, {"error": "invalid_signature"})
        if not isinstance(notice, dict) or not isinstance(notice.get("id"), str):
            log("rejected", status=400, webhook_id=webhook_id, reason="not a notice")
            return self.answer(400, {"error": "not_a_notice"})

        # 2. Once per notice id.
        if not self.store.claim(notice, raw.decode()):
            log("duplicate", id=notice["id"], type=notice.get("type"))
            return self.answer(204)

        # 3. The work; a failure releases the claim and asks spkeeper to retry.
        try:
            action = process(notice)
        except Exception as e:  # noqa: BLE001 - any failure means "try again later"
            self.store.release(notice["id"])
            log("failed", id=notice["id"], reason=str(e))
            return self.answer(500, {"error": "processing_failed"})
        log(
            "processed",
            id=notice["id"],
            type=notice.get("type"),
            grant_id=(notice.get("grant") or {}).get("id"),
            days_left=notice.get("days_left"),
            action=action,
            notice=notice,
        )
        return self.answer(204)


def main() -> int:
    secret = os.environ.get("SPKEEPER_WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        print("error: SPKEEPER_WEBHOOK_SECRET must be the whsec_… secret spkeeper signs with", file=sys.stderr)
        return 2
    host, _, port = os.environ.get("RECEIVER_ADDR", "127.0.0.1:8090").rpartition(":")
    Handler.webhook = Webhook(secret)
    Handler.store = Store(os.environ.get("RECEIVER_DB", "notices.sqlite3"))
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    bound_host, bound_port = server.server_address[:2]
    print(f"receiver listening on http://{bound_host}:{bound_port}{PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
