// Verifies a webhook sidekey sent, with Nango's own Node SDK (@nangohq/node).
// stdin: {"key": signing key, "body": raw body, "headers": {name: value}}
// stdout: {"hmac": verifyIncomingWebhookRequest(...), "legacy": verifyWebhookSignature(...)}
// Run by tests/webhooks.rs; `npm ci` in this directory installs the SDK.
import { Nango } from '@nangohq/node';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const { key, body, headers } = JSON.parse(input);
const nango = new Nango({ secretKey: 'unused-by-verification', webhookSigningKey: key });
const hmac = nango.verifyIncomingWebhookRequest(body, headers);
// The legacy check hashes JSON.stringify of the parsed body: it holds only if the body is
// compact JSON whose key order survives a parse, as Nango's (and sidekey's) are.
let legacy = false;
try {
  legacy = nango.verifyWebhookSignature(headers['x-nango-signature'], JSON.parse(body));
} catch {
  // A body that is not JSON any more (a test's tampering) fails the legacy check.
}
process.stdout.write(JSON.stringify({ hmac, legacy }));
