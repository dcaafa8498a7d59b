// Nango's own SDKs against a running sidekey, headless (no browser): @nangohq/node makes
// connect sessions on the main listener with the secret key, @nangohq/frontend submits an API
// key and basic credentials on the public Connect listener with the session token, as an
// application's frontend would. Run by tests/connect_node.rs, which starts the sidekey binary
// and a loopback verification upstream and passes:
//   SIDEKEY_URL (main listener), CONNECT_URL (public listener), SECRET_KEY, GOOD_KEY, BAD_KEY.
// Prints one JSON line of what it made (the Rust test greps sidekey's log for the token);
// exits non-zero on the first failed check.
import assert from 'node:assert/strict';
import { Nango as Backend } from '@nangohq/node';
import Frontend from '@nangohq/frontend';

const env = (name) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set`);
    return v;
};
const [main, publicUrl, secretKey, goodKey, badKey] = ['SIDEKEY_URL', 'CONNECT_URL', 'SECRET_KEY', 'GOOD_KEY', 'BAD_KEY'].map(env);

const backend = new Backend({ secretKey, host: main });

// The backend: a session for one end user, two integrations allowed.
const session = await backend.createConnectSession({
    end_user: { id: 'node-user', email: 'node@example.com', display_name: 'Node User' },
    organization: { id: 'org-node', display_name: 'Node Org' },
    allowed_integrations: ['keyed', 'basic'],
    tags: { origin: 'node-sdk' }
});
const token = session.data.token;
assert.match(token, /^nango_connect_session_[a-f0-9]{64}$/);
assert.ok(session.data.connect_link.startsWith(publicUrl), session.data.connect_link);
assert.ok(new Date(session.data.expires_at) > new Date());

// The frontend: the SDK builds its URLs from `host` (the public listener).
const frontend = new Frontend({ host: publicUrl, connectSessionToken: token });

// A key the provider refuses surfaces as AuthError{type: 'connection_test_failed'}.
await assert.rejects(
    frontend.auth('keyed', { params: { region: 'eu' }, credentials: { apiKey: badKey } }),
    (e) => e.type === 'connection_test_failed' && !String(e.message).includes(badKey)
);
// An integration outside allowed_integrations.
await assert.rejects(
    frontend.auth('untested', { credentials: { apiKey: goodKey } }),
    (e) => e.type === 'integration_not_allowed'
);

const keyed = await frontend.auth('keyed', { params: { region: 'eu' }, credentials: { apiKey: goodKey } });
assert.equal(keyed.providerConfigKey, 'keyed');
assert.match(keyed.connectionId, /^[0-9a-f-]{36}$/);

const basic = await frontend.auth('basic', { credentials: { username: 'user', password: 'pass' } });
assert.equal(basic.providerConfigKey, 'basic');

// The backend sees both connections, with the session's end user and tags.
const { connections } = await backend.listConnections();
const mine = connections.filter((c) => c.end_user?.id === 'node-user');
assert.equal(mine.length, 2, JSON.stringify(connections));
for (const c of mine) {
    assert.equal(c.tags.end_user_id, 'node-user');
    assert.equal(c.tags.organization_id, 'org-node');
    assert.equal(c.tags.origin, 'node-sdk');
}
const conn = await backend.getConnection('keyed', keyed.connectionId);
assert.equal(conn.credentials.apiKey, goodKey);
assert.equal(conn.connection_config.region, 'eu');

// Re-authorization: a reconnect session for that connection keeps its id.
const again = await backend.createReconnectSession({ connection_id: keyed.connectionId, integration_id: 'keyed' });
const reconnecting = new Frontend({ host: publicUrl, connectSessionToken: again.data.token });
const re = await reconnecting.reconnect('keyed', { credentials: { apiKey: goodKey } });
assert.equal(re.connectionId, keyed.connectionId);

console.log(JSON.stringify({ ok: true, token, reconnect_token: again.data.token, keyed: keyed.connectionId, basic: basic.connectionId }));
