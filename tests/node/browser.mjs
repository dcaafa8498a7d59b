// sidekey's Connect UI in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): the page at connect_link, by mouse and by keyboard, the same page embedded
// by @nangohq/frontend's openConnectUI from an application page on another origin, the
// OAuth2 authorization-code flow in its popup (a loopback authorization server that consents
// at once, and a loopback token endpoint), and the SDK's own nango.auth() OAuth popup, which
// waits for sidekey's WebSocket messages.
// Run by tests/connect_node.rs with SIDEKEY_URL, CONNECT_URL, SECRET_KEY, GOOD_KEY, BAD_KEY and
// SCREENSHOTS (a directory under target/). Prints one JSON line; exits non-zero on failure.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Nango as Backend } from '@nangohq/node';
import { chromium } from 'playwright-core';

const env = (name) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set`);
    return v;
};
const [main, publicUrl, secretKey, goodKey, badKey, shots] = ['SIDEKEY_URL', 'CONNECT_URL', 'SECRET_KEY', 'GOOD_KEY', 'BAD_KEY', 'SCREENSHOTS'].map(env);
fs.mkdirSync(shots, { recursive: true });
const backend = new Backend({ secretKey, host: main });
const session = async (allowed) =>
    (await backend.createConnectSession({ end_user: { id: 'browser-user', display_name: 'Browser User' }, allowed_integrations: allowed })).data;

// The application page of the openConnectUI check, on its own 127.0.0.1 origin; it loads the
// frontend SDK's own ES modules from node_modules (served, not copied).
const sdkDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules/@nangohq/frontend/dist');
const appHtml = `<!doctype html><html><body><h1>Application</h1><script type="module">
import Nango from '/sdk/index.js';
window.events = [];
window.openUI = (token, url) => {
  const nango = new Nango({ connectSessionToken: token });
  nango.openConnectUI({ baseURL: url, apiURL: url, onEvent: (e) => window.events.push(e) });
};
window.authOAuth = (token, url) => new Nango({ host: url, connectSessionToken: token }).auth('oauthi');
window.sdkReady = true;
</script></body></html>`;
const appServer = http.createServer((req, res) => {
    if (req.url === '/') {
        res.writeHead(200, { 'content-type': 'text/html' });
        return res.end(appHtml);
    }
    const name = req.url.startsWith('/sdk/') ? path.basename(req.url.slice(5)) : null;
    const file = name && path.join(sdkDir, name);
    if (file && name.endsWith('.js') && fs.existsSync(file)) {
        res.writeHead(200, { 'content-type': 'text/javascript' });
        return res.end(fs.readFileSync(file));
    }
    res.writeHead(404);
    res.end();
});
await new Promise((r) => appServer.listen(0, '127.0.0.1', r));
const appUrl = `http://127.0.0.1:${appServer.address().port}/`;

const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
});
const problems = [];
const watch = (page) => {
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    // The refused key's 400 is expected; Chromium reports every failed fetch on the console.
    page.on('console', (m) => {
        if (m.type() === 'error' && !m.text().includes('status of 400')) problems.push(`console: ${m.text()}`);
    });
    // Only loopback may receive a packet: anything else is aborted and reported.
    page.route('**/*', (route) => {
        const host = new URL(route.request().url()).hostname;
        if (host === '127.0.0.1') return route.continue();
        problems.push(`request to ${host}`);
        return route.abort();
    }).catch(() => { /* a popup that already closed itself */ });
};
const result = { ok: false, tokens: [] };
try {
    // 1. connect_link, by mouse: a refused key, then a good one.
    const s1 = await session(['keyed', 'basic']);
    result.tokens.push(s1.token);
    assert.ok(s1.connect_link.startsWith(publicUrl));
    const page = await browser.newPage();
    watch(page);
    await page.goto(s1.connect_link);
    await page.getByRole('button', { name: /Keyed API/ }).click();
    await page.getByLabel('Region').fill('eu');
    await page.getByLabel('API key').fill(badKey);
    await page.getByRole('button', { name: 'Connect', exact: true }).click();
    await page.getByRole('alert').filter({ hasText: 'That key was refused by Keyed API' }).waitFor();
    await page.screenshot({ path: path.join(shots, 'refused.png') });
    await page.getByLabel('API key').fill(goodKey);
    await page.getByRole('button', { name: 'Connect', exact: true }).click();
    await page.getByText('Keyed API is connected.').first().waitFor();
    await page.screenshot({ path: path.join(shots, 'connected.png') });
    // The list, for the README.
    const listPage = await browser.newPage();
    watch(listPage);
    await listPage.goto(s1.connect_link);
    await listPage.getByRole('button', { name: /User Pass/ }).waitFor();
    await listPage.screenshot({ path: path.join(shots, 'list.png') });

    // 2. By keyboard only: one integration opens its form at once, focus in the first field.
    const s2 = await session(['basic']);
    result.tokens.push(s2.token);
    const kb = await browser.newPage();
    watch(kb);
    await kb.goto(s2.connect_link);
    await kb.getByLabel('Username').waitFor();
    await kb.keyboard.type('user');
    await kb.keyboard.press('Tab');
    await kb.keyboard.type('pass');
    await kb.keyboard.press('Enter');
    await kb.getByText('User Pass is connected.').first().waitFor();

    // 3. openConnectUI from the application's page: ready → session_token, connect, close.
    const s3 = await session(['keyed']);
    result.tokens.push(s3.token);
    const appPage = await browser.newPage();
    watch(appPage);
    await appPage.goto(appUrl);
    await appPage.waitForFunction(() => window.sdkReady === true);
    await appPage.evaluate(([t, u]) => window.openUI(t, u), [s3.token, publicUrl]);
    const frame = appPage.frameLocator('#connect-ui');
    await frame.getByLabel('Region').fill('eu');
    await frame.getByLabel('API key').fill(goodKey);
    await frame.getByRole('button', { name: 'Connect', exact: true }).click();
    await appPage.waitForFunction(() => window.events.some((e) => e.type === 'connect'));
    await appPage.screenshot({ path: path.join(shots, 'embedded.png') });
    await frame.getByRole('button', { name: 'Close' }).click();
    await appPage.waitForFunction(() => !document.getElementById('connect-ui'));
    const events = await appPage.evaluate(() => window.events);
    const types = events.map((e) => e.type);
    assert.equal(types[0], 'ready', JSON.stringify(types));
    assert.ok(types.includes('connect') && types.at(-1) === 'close', JSON.stringify(types));
    const connected = events.find((e) => e.type === 'connect').payload;
    assert.equal(connected.providerConfigKey, 'keyed');

    // 4. OAuth2 in the popup: consent at the loopback authorization server, the callback page
    // posts the outcome back, the page shows it.
    const s4 = await session(['oauthi']);
    result.tokens.push(s4.token);
    const op = await browser.newPage();
    watch(op);
    op.context().on('page', (p) => watch(p));
    await op.goto(s4.connect_link);
    const [consent] = await Promise.all([
        op.waitForEvent('popup'),
        op.getByRole('button', { name: 'Continue with OAuth Provider' }).click()
    ]);
    await op.getByText('OAuth Provider is connected.').first().waitFor();
    await op.screenshot({ path: path.join(shots, 'oauth-connected.png') });
    await consent.waitForEvent('close', { timeout: 5000 }).catch(() => {});

    // 5. The frontend SDK's own OAuth popup: nango.auth() opens its WebSocket, the popup goes
    // through /oauth/connect with the ws_client_id, and the promise resolves on `success`.
    const s5 = await session(['oauthi']);
    result.tokens.push(s5.token);
    const sdkPage = await browser.newPage();
    watch(sdkPage);
    await sdkPage.goto(appUrl);
    await sdkPage.waitForFunction(() => window.sdkReady === true);
    const viaSdk = await sdkPage.evaluate(([t, u]) => window.authOAuth(t, u), [s5.token, publicUrl]);
    assert.equal(viaSdk.providerConfigKey, 'oauthi');
    assert.match(viaSdk.connectionId, /^[0-9a-f-]{36}$/);

    const { connections } = await backend.listConnections();
    const mine = connections.filter((c) => c.end_user?.id === 'browser-user');
    assert.equal(mine.length, 5, JSON.stringify(connections));
    assert.ok(mine.some((c) => c.connection_id === viaSdk.connectionId));
    const oauthConn = mine.find((c) => c.provider_config_key === 'oauthi');
    assert.ok(oauthConn, 'the OAuth connection');
    const full = await backend.getConnection('oauthi', oauthConn.connection_id);
    assert.equal(full.credentials.access_token, 'at-browser');
    assert.ok(mine.some((c) => c.connection_id === connected.connectionId));
    assert.deepEqual(problems, []);
    result.ok = true;
} finally {
    if (!result.ok) {
        for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
            await p.screenshot({ path: path.join(shots, `failure-${i}.png`) }).catch(() => {});
        }
        console.error(problems.join('\n'));
    }
    await browser.close();
    appServer.close();
}
console.log(JSON.stringify(result));
