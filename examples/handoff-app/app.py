#!/usr/bin/env python3
"""A minimal add-in web app that takes the hand-off from spkeeper (Python, standard library only).

spkeeper sits beside the add-in's own app. With `SPKEEPER_RETURN_URL` pointing at this app's
`/after-launch`, a successful launch sends the user's browser here with `grant_id` and a
`ticket` in the query. The ticket is what counts:

1. `GET /after-launch?grant_id=…&ticket=…` — the backend trades the ticket with
   `POST {SPKEEPER_URL}/handoff {"ticket": …}`. The ticket is signed, bound to one grant, valid
   120 seconds and usable once, so the answer says whose launch this really was. The `grant_id`
   in the URL is never trusted (a user can edit it): it is only compared, and a mismatch is
   logged. The app then starts its own session (a random id in an HttpOnly cookie, mapped to the
   grant id on the server) and redirects to `/`, so the ticket leaves the address bar.
2. `GET /` — for the session's grant, the backend asks spkeeper for an access token
   (`POST {SPKEEPER_URL}/token {"grant_id": …}`), uses it once against SharePoint's REST API
   (`/_api/web/currentuser`) and shows the user, their site and that a token is ready. The
   token itself is never printed, logged or sent to the browser. When spkeeper answers
   `409 relaunch_required` the page offers the grant's renew link instead.

Configuration (environment):

    SPKEEPER_URL      spkeeper's base URL, e.g. http://127.0.0.1:8080 (required)
    SPKEEPER_API_KEY  the bearer key of spkeeper's app-backend routes (required; in AWS these
                      routes use IAM auth instead: sign the same calls with SigV4, see
                      ../sigv4-javascript and ../csharp/TokenClient)
    APP_ADDR          host:port to listen on (default 127.0.0.1:8091; port 0 = any free port)

Run it, then start spkeeper with SPKEEPER_RETURN_URL=http://127.0.0.1:8091/after-launch.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COOKIE = "app_session"
TIMEOUT = 10  # seconds, for every call the backend makes


def log(message: str) -> None:
    print(message, flush=True)


class Spkeeper:
    """The app-backend routes of spkeeper: `/handoff` and `/token`."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base = base_url.rstrip("/")
        self.api_key = api_key

    def post(self, path: str, payload: dict) -> tuple[int, dict, dict]:
        """(status, JSON body, headers) of a POST; errors are answers too, not exceptions."""
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(payload).encode(),
            method="POST",
            headers={
                "authorization": f"Bearer {self.api_key}",
                "content-type": "application/json",
                "accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                return resp.status, json.load(resp), dict(resp.headers)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except ValueError:
                body = {}
            return e.code, body, dict(e.headers)

    def handoff(self, ticket: str) -> tuple[int, dict, dict]:
        return self.post("/handoff", {"ticket": ticket})

    def token(self, grant_id: str) -> tuple[int, dict, dict]:
        return self.post("/token", {"grant_id": grant_id})


def sharepoint_current_user(site_url: str, access_token: str) -> dict | None:
    """What SharePoint says about the token's user: the proof the token works."""
    req = urllib.request.Request(
        site_url.rstrip("/") + "/_api/web/currentuser",
        headers={
            "authorization": f"Bearer {access_token}",
            "accept": "application/json;odata=nometadata",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            body = json.load(resp)
    except (urllib.error.URLError, ValueError, OSError):
        return None
    return body.get("d", body) if isinstance(body, dict) else None


class Sessions:
    """The app's own sessions: random id → grant id (server-side, in memory for the example)."""

    def __init__(self) -> None:
        self._by_id: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, grant_id: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = grant_id
        return sid

    def grant_of(self, sid: str | None) -> str | None:
        with self._lock:
            return self._by_id.get(sid or "")

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px system-ui,sans-serif;margin:2rem;max-width:42rem}"
        "dt{font-weight:600}dd{margin:0 0 .6rem 0}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


class Handler(BaseHTTPRequestHandler):
    server_version = "spkeeper-example-handoff-app"
    spkeeper: Spkeeper
    sessions: Sessions

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # the query holds a ticket: never log request lines

    def send_page(self, status: int, title: str, body: str, extra: dict | None = None) -> None:
        content = page(title, body)
        self.send_response(status)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(content)))
        self.send_header("cache-control", "no-store")
        self.send_header("referrer-policy", "no-referrer")
        self.send_header("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)

    def session_id(self) -> str | None:
        cookie = SimpleCookie(self.headers.get("cookie", ""))
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel else None

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/after-launch":
            return self.after_launch(query)
        if url.path == "/":
            return self.home()
        return self.send_page(404, "Not found", "<p>There is nothing here.</p>")

    def after_launch(self, query: dict) -> None:
        ticket = query.get("ticket", "")
        if not ticket:
            return self.send_page(400, "Open the add-in from SharePoint", "<p>This page needs a launch from SharePoint.</p>")
        status, body, _ = self.spkeeper.handoff(ticket)
        if status != 200:
            code = body.get("error", "error")
            log(f"handoff refused: {status} {code}")
            if status in (400, 409, 410):
                return self.send_page(
                    400,
                    "This link cannot be used",
                    f"<p>The sign-in link was already used, has expired or was altered ({esc(code)}). "
                    "Open the add-in from SharePoint again.</p>",
                )
            return self.send_page(502, "Sign-in is unavailable", f"<p>The sign-in service answered {status} ({esc(code)}).</p>")
        grant = body["grant"]
        if query.get("grant_id") not in (None, grant["id"]):
            # The URL was edited: it does not matter, the ticket decides. Worth a log line.
            log(f"handoff: the URL's grant_id {query.get('grant_id')!r} is not the ticket's; using the ticket's")
        sid = self.sessions.start(grant["id"])
        log(f"handoff: grant {grant['id']} signed in")
        self.send_page(
            303,
            "Signed in",
            '<p><a href="/">Continue</a></p>',
            {
                "location": "/",
                "set-cookie": f"{COOKIE}={sid}; HttpOnly; Secure; Path=/; SameSite=Lax",
            },
        )

    def home(self) -> None:
        sid = self.session_id()
        grant_id = self.sessions.grant_of(sid)
        if grant_id is None:
            return self.send_page(401, "Open the add-in from SharePoint", "<p>You are not signed in to this app.</p>")
        status, body, headers = self.spkeeper.token(grant_id)
        if status == 409:
            renew = body.get("renew_url") or ""
            log(f"token: grant {grant_id} needs a relaunch")
            return self.send_page(
                409,
                "Reconnect to SharePoint",
                "<p>Your connection to SharePoint has run out.</p>"
                f'<p><a href="{esc(renew)}">Reconnect</a> (you will pass through SharePoint and come back here).</p>',
            )
        if status == 404:
            self.sessions.end(sid)
            return self.send_page(401, "Open the add-in from SharePoint", "<p>Your connection was removed. Open the add-in again.</p>")
        if status == 503:
            return self.send_page(
                503,
                "Try again in a minute",
                "<p>SharePoint's token service is not answering right now.</p>",
                {"retry-after": headers.get("Retry-After", "30")},
            )
        if status != 200:
            log(f"token: grant {grant_id} refused: {status} {body.get('error')}")
            return self.send_page(502, "Something is wrong on our side", f"<p>Token service: {status} {esc(body.get('error'))}.</p>")

        grant = body["grant"]
        # The token is used here, on the server, and goes nowhere else.
        me = sharepoint_current_user(grant["site_url"], body["access_token"])
        log(f"token: grant {grant_id} has an access token until {body.get('expires_at')}")
        user = grant.get("user") or {}
        sp_says = esc(me.get("Title")) if me else "(SharePoint did not answer)"
        self.send_page(
            200,
            f"Hello, {user.get('title') or 'there'}",
            "<dl>"
            f"<dt>User</dt><dd>{esc(user.get('title'))} &lt;{esc(user.get('email'))}&gt;</dd>"
            f"<dt>Site</dt><dd>{esc(grant.get('site_url'))}</dd>"
            f"<dt>Access token</dt><dd>ready, valid until {esc(body.get('expires_at'))} (kept on the server)</dd>"
            f"<dt>SharePoint says you are</dt><dd>{sp_says}</dd>"
            f"<dt>Connected until</dt><dd>{esc(grant.get('refresh_token_expires_at'))} "
            f"({esc(grant.get('days_left'))} days, {esc(grant.get('status'))})</dd>"
            "</dl>",
        )


def main() -> int:
    base = os.environ.get("SPKEEPER_URL", "")
    key = os.environ.get("SPKEEPER_API_KEY", "")
    if not base or not key:
        print("error: set SPKEEPER_URL and SPKEEPER_API_KEY", file=sys.stderr)
        return 2
    host, _, port = os.environ.get("APP_ADDR", "127.0.0.1:8091").rpartition(":")
    Handler.spkeeper = Spkeeper(base, key)
    Handler.sessions = Sessions()
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    bound_host, bound_port = server.server_address[:2]
    print(f"handoff-app listening on http://{bound_host}:{bound_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
