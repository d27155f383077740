// A webhook receiver for spkeeper's notices, in TypeScript on Node's own HTTP server with the
// `standardwebhooks` package.
//
// It does the three things every receiver must do:
//
// 1. Verify the Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
//    `webhook-signature`) over the exact bytes received, with the `whsec_…` secret spkeeper signs
//    with. A bad or missing signature, or a timestamp more than five minutes off, is refused with
//    401 and nothing is processed.
// 2. Deduplicate on the notice's `id`. spkeeper delivers at least once: a notice whose 2xx answer
//    got lost is sent again, with the same `id`. The first delivery claims the id; a later one is
//    answered 2xx and not processed again. (Claims live in memory here, so they last as long as
//    the process: in production, claim the id with a unique key in your database, as the Python
//    example does with SQLite.)
// 3. Answer fast: 2xx once the notice is recorded. A failure while processing releases the claim
//    and answers 500, so spkeeper retries later.
//
// Configuration (environment):
//
//   SPKEEPER_WEBHOOK_SECRET  the whsec_… secret (required; the same value spkeeper has)
//   RECEIVER_ADDR            host:port to listen on (default 127.0.0.1:8090; port 0 = any free port)
//
// Every outcome is printed as one JSON line on standard output (`processed`, `duplicate`,
// `rejected`), which is what the repository's test reads.

import { createServer, IncomingMessage, ServerResponse } from "node:http";
import { AddressInfo } from "node:net";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const PATH = "/webhook";
const MAX_BODY = 64 * 1024; // spkeeper's notices are a few hundred bytes

/** A notice as spkeeper sends it (version 1); fields are only ever added. */
interface Notice {
  version: number;
  id: string;
  type: string;
  created_at: string;
  grant: {
    id: string;
    realm?: string;
    site_url: string;
    user: { title?: string; email?: string; login_name?: string } | null;
  } | null;
  refresh_token_expires_at?: string;
  days_left?: number;
  renew_url?: string | null;
  client_secret_expires_at?: string;
}

function log(event: string, fields: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

/** Notice ids already claimed: "processing" while the work runs, then "done". */
const claims = new Map<string, "processing" | "done">();

/** Your application's work for each notice type; here it only says what it would do. */
function handle(notice: Notice): string {
  const user = notice.grant?.user;
  const who = user?.email ?? user?.title ?? notice.grant?.id ?? "?";
  switch (notice.type) {
    case "refresh_token.expiring":
      return `remind ${who}: reopen the add-in within ${notice.days_left} days (${notice.renew_url})`;
    case "refresh_token.expired":
      return `mark ${who} disconnected; ask them to reopen the add-in (${notice.renew_url})`;
    case "refresh_token.revoked":
      return `mark ${who} disconnected (access revoked); ask them to reopen the add-in`;
    case "refresh_token.renewed":
      return `clear the reminders for ${who}: connected until ${notice.refresh_token_expires_at}`;
    case "client_secret.expiring":
      return `page the operators: the add-in's client secret expires ${notice.client_secret_expires_at}`;
    case "webhook.test":
      return "nothing to do: a connectivity test from spkeeper doctor";
    default:
      return `ignore unknown notice type ${JSON.stringify(notice.type)}`;
  }
}

function answer(res: ServerResponse, status: number, body?: Record<string, unknown>): void {
  const text = body === undefined ? "" : JSON.stringify(body);
  res.writeHead(status, {
    ...(text ? { "content-type": "application/json" } : {}),
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/** The body as raw bytes, or null when it is larger than `MAX_BODY`. */
async function readBody(req: IncomingMessage): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) return null;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Node's headers, one string each (the library wants a plain record). */
function plainHeaders(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (typeof value === "string") out[name] = value;
    else if (Array.isArray(value)) out[name] = value.join(", ");
  }
  return out;
}

function isNotice(value: unknown): value is Notice {
  return typeof value === "object" && value !== null && typeof (value as Notice).id === "string";
}

async function receive(webhook: Webhook, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.method !== "POST" || req.url !== PATH) return answer(res, 404, { error: "not_found" });
  const raw = await readBody(req);
  if (raw === null) return answer(res, 413, { error: "payload_too_large" });
  const headers = plainHeaders(req);
  const webhookId = headers["webhook-id"] ?? "";

  // 1. The signature, over the body exactly as received (never over re-serialised JSON).
  let notice: unknown;
  try {
    notice = webhook.verify(raw.toString("utf8"), headers);
  } catch (e) {
    const reason = e instanceof WebhookVerificationError ? e.message : "malformed signature or body";
    log("rejected", { status: 401, webhook_id: webhookId, reason });
    return answer(res, 401, { error: "invalid_signature" });
  }
  if (!isNotice(notice)) {
    log("rejected", { status: 400, webhook_id: webhookId, reason: "not a notice" });
    return answer(res, 400, { error: "not_a_notice" });
  }

  // 2. Once per notice id.
  if (claims.has(notice.id)) {
    log("duplicate", { id: notice.id, type: notice.type });
    return answer(res, 204);
  }
  claims.set(notice.id, "processing");

  // 3. The work; a failure releases the claim and asks spkeeper to retry.
  let action: string;
  try {
    action = handle(notice);
  } catch (e) {
    claims.delete(notice.id);
    log("failed", { id: notice.id, reason: String(e) });
    return answer(res, 500, { error: "processing_failed" });
  }
  claims.set(notice.id, "done");
  log("processed", {
    id: notice.id,
    type: notice.type,
    grant_id: notice.grant?.id ?? null,
    days_left: notice.days_left ?? null,
    action,
    notice,
  });
  return answer(res, 204);
}

function main(): void {
  const secret = process.env.SPKEEPER_WEBHOOK_SECRET ?? "";
  if (!secret.startsWith("whsec_")) {
    process.stderr.write("error: SPKEEPER_WEBHOOK_SECRET must be the whsec_… secret spkeeper signs with\n");
    process.exit(2);
  }
  const webhook = new Webhook(secret);
  const addr = process.env.RECEIVER_ADDR ?? "127.0.0.1:8090";
  const colon = addr.lastIndexOf(":");
  const host = addr.slice(0, colon) || "127.0.0.1";
  const port = Number(addr.slice(colon + 1));

  const server = createServer((req, res) => {
    receive(webhook, req, res).catch((e: unknown) => {
      log("failed", { reason: String(e) });
      if (!res.headersSent) answer(res, 500, { error: "internal_error" });
    });
  });
  server.listen(port, host, () => {
    const bound = server.address() as AddressInfo;
    process.stdout.write(`receiver listening on http://${bound.address}:${bound.port}${PATH}\n`);
  });
  process.on("SIGTERM", () => process.exit(0));
}

main();
