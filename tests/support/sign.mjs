#!/usr/bin/env node
// Sign a Standard Webhooks message with the npm reference library.
//
// Usage: node sign.mjs SECRET MSG_ID TIMESTAMP < body
//
// Prints exactly the `webhook-signature` header value (e.g. "v1,<base64>")
// that `new Webhook(SECRET).sign(MSG_ID, new Date(TIMESTAMP * 1000), body)`
// produces, with no trailing newline. Nothing else is written to stdout.
//
// Notes on the library (standardwebhooks 1.1.1, dist/index.js):
// * SECRET: a leading "whsec_" is stripped, the rest is decoded with
//   @stablelib/base64 (standard alphabet; throws on characters outside it).
// * sign() takes a Date and signs Math.floor(date.getTime() / 1000).
// * The body is read from stdin as raw bytes and decoded as strict UTF-8
//   (a leading BOM is kept, not stripped); sign() re-encodes the string
//   with TextEncoder (UTF-8).
import { readFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

const args = process.argv.slice(2);
if (args.length !== 3) {
  process.stderr.write("usage: node sign.mjs SECRET MSG_ID TIMESTAMP < body\n");
  process.exit(2);
}
const [secret, msgId, tsArg] = args;
if (!/^-?[0-9]+$/.test(tsArg)) {
  process.stderr.write(`sign.mjs: TIMESTAMP must be integer unix seconds, got ${JSON.stringify(tsArg)}\n`);
  process.exit(2);
}
const ts = Number.parseInt(tsArg, 10);
const body = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(readFileSync(0));
process.stdout.write(new Webhook(secret).sign(msgId, new Date(ts * 1000), body));
