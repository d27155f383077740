// The Node peer of the validation benchmark: pnpjs v2's path for a provider-hosted add-in's
// context token (@pnp/nodejs 2.15.0, sptokenutils.js and providerhosted.js): the secret
// base64-decoded, jsonwebtoken 8.5.1 `verify`, then `JSON.parse(appctx)` and the realm from
// `iss`. Reads {secret, tokens, rounds} from the file named on the command line; prints
// {"best_us","median_us","node","jsonwebtoken"}: microseconds per token.
"use strict";
const fs = require("fs");
const jwt = require("jsonwebtoken");
const jwtVersion = require("jsonwebtoken/package.json").version;

const { secret, tokens, rounds } = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
let sink = 0;
function once() {
  for (const token of tokens) {
    const key = Buffer.from(secret, "base64");
    const payload = jwt.verify(token, key);
    const appctx = JSON.parse(payload.appctx);
    const realm = payload.iss.split("@")[1];
    sink += appctx.CacheKey.length + realm.length + payload.refreshtoken.length;
  }
}
const per = [];
for (let r = 0; r < Math.max(1, rounds); r++) {
  const started = process.hrtime.bigint();
  once();
  per.push(Number(process.hrtime.bigint() - started) / 1000 / tokens.length);
}
per.sort((a, b) => a - b);
if (sink === 0) throw new Error("nothing validated");
process.stdout.write(JSON.stringify({
  best_us: per[0],
  median_us: per[Math.floor(per.length / 2)],
  node: process.version,
  jsonwebtoken: jwtVersion,
}));
