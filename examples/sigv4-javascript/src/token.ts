// Calls spkeeper's `POST /token` in AWS, where the route is behind API Gateway's IAM
// authorizer: the request is signed with AWS Signature Version 4 (service `execute-api`) by the
// AWS SDK for JavaScript v3's signer, with the credentials of the role your backend runs as.
//
//   SPKEEPER_API_URL=https://addin.example.com AWS_REGION=eu-west-1 node dist/token.js GRANT_ID
//
// SPKEEPER_API_URL is the stack's PublicUrl (the custom domain mapped to the HTTP API) or its
// ApiUrl output; AWS_REGION is the region the stack runs in (the signature's scope). The
// credentials come from the SDK's default chain: environment variables, shared config and SSO
// profiles, the ECS or EC2 role, web identity (EKS), Lambda's own role. Never print the access
// token: this program prints only when it expires.

import { Sha256 } from "@aws-crypto/sha256-js";
import { defaultProvider } from "@aws-sdk/credential-provider-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";

/** The `grant` object of spkeeper's answers (never a token). */
export interface Grant {
  id: string;
  kind: string;
  site_url: string;
  user: { title?: string; email?: string; login_name?: string } | null;
  status: "active" | "expiring" | "expired" | "revoked";
  refresh_token_expires_at: string;
  days_left: number;
  renew_url: string;
}

export interface AccessToken {
  access_token: string;
  token_type: "Bearer";
  expires_at: string;
  resource: string;
  grant: Grant;
}

/** What `/token` can answer besides a token, as a value the caller must handle. */
export type TokenResult =
  | { kind: "token"; token: AccessToken }
  | { kind: "relaunch_required"; renewUrl: string } // 409: send the user through SharePoint again
  | { kind: "unavailable"; retryAfterSeconds: number } // 503: ACS is down; the grant is unchanged
  | { kind: "error"; status: number; code: string; message: string };

export class SpkeeperClient {
  private readonly signer: SignatureV4;

  constructor(
    private readonly apiUrl: string,
    region: string,
    credentials = defaultProvider(),
  ) {
    this.signer = new SignatureV4({ credentials, region, service: "execute-api", sha256: Sha256 });
  }

  /** An access token for the grant's site (`host` and `scope` as spkeeper documents them). */
  async token(grantId: string, options: { host?: string; scope?: string } = {}): Promise<TokenResult> {
    const { status, headers, body } = await this.post("/token", { grant_id: grantId, ...options });
    if (status === 200) return { kind: "token", token: body as unknown as AccessToken };
    if (status === 409) return { kind: "relaunch_required", renewUrl: String(body.renew_url ?? "") };
    if (status === 503) {
      return { kind: "unavailable", retryAfterSeconds: Number(headers.get("retry-after") ?? "30") };
    }
    return {
      kind: "error",
      status,
      code: String(body.error ?? "http_" + status),
      // API Gateway's own refusals (403: no execute-api:Invoke, or a bad signature) say `message`.
      message: String(body.message ?? ""),
    };
  }

  /** POSTs JSON, SigV4-signed; the other app-backend routes (`/handoff`, ...) work the same way. */
  async post(
    path: string,
    payload: unknown,
  ): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
    const url = new URL(path, this.apiUrl);
    const body = JSON.stringify(payload);
    const request = new HttpRequest({
      method: "POST",
      protocol: url.protocol,
      hostname: url.hostname,
      port: url.port ? Number(url.port) : undefined,
      path: url.pathname,
      // `host` must be signed, and must be the host the request goes to (a custom domain is fine).
      headers: { host: url.host, "content-type": "application/json" },
      body,
    });
    const signed = await this.signer.sign(request);
    // fetch sets Host itself, from the URL: the same value that was signed.
    const headers: Record<string, string> = { ...signed.headers };
    delete headers.host;
    const resp = await fetch(url, { method: "POST", headers, body, redirect: "manual" });
    const text = await resp.text();
    let parsed: Record<string, unknown> = {};
    try {
      parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    } catch {
      parsed = { message: text.slice(0, 200) };
    }
    return { status: resp.status, headers: resp.headers, body: parsed };
  }
}

async function main(): Promise<number> {
  const apiUrl = process.env.SPKEEPER_API_URL;
  const region = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  const grantId = process.argv[2];
  if (!apiUrl || !region || !grantId) {
    process.stderr.write("usage: SPKEEPER_API_URL=https://… AWS_REGION=… node dist/token.js GRANT_ID\n");
    return 2;
  }
  const result = await new SpkeeperClient(apiUrl, region).token(grantId);
  switch (result.kind) {
    case "token": {
      const { grant, expires_at, resource } = result.token;
      console.log(`access token for grant ${grant.id} (${grant.site_url}) until ${expires_at}; resource ${resource}`);
      console.log(`the grant: ${grant.status}, ${grant.days_left} days left`);
      return 0;
    }
    case "relaunch_required":
      console.log(`the user must open the add-in again: ${result.renewUrl}`);
      return 1;
    case "unavailable":
      console.log(`SharePoint's token service is unavailable; retry in ${result.retryAfterSeconds} s`);
      return 1;
    case "error":
      console.error(`refused: ${result.status} ${result.code} ${result.message}`);
      return 1;
  }
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
