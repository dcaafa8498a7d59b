// sidekey's Connect UI. Reads the session (GET connect/session, connect/integrations with the
// session token as Bearer), lists the integrations it may connect, and submits an API key or
// basic credentials to the auth routes @nangohq/frontend uses. Embedded by openConnectUI it
// speaks the frontend SDK's iframe protocol: it posts {type:'ready'} to its parent and takes
// {type:'session_token', sessionToken}; it posts {type:'connect', payload:{connectionId,
// providerConfigKey}}, {type:'error', payload:{errorType, errorMessage}} and {type:'close'}.
// Everything shown is set as text, never as HTML.
'use strict';
(function () {
    const embedded = window.parent !== window;
    const app = document.getElementById('app');
    const status = document.getElementById('status');
    const title = document.getElementById('title');
    const back = document.getElementById('back');
    // The API lives at the root of the listener, or beside `connect/` when the page is served
    // at <base>/connect/ (a path prefix in --public-url is kept).
    const page = new URL('.', window.location.href);
    const apiBase = page.pathname.endsWith('/connect/') ? new URL('..', page) : page;
    let token = new URLSearchParams(window.location.search).get('session_token');
    let integrations = [];

    const post = (msg) => {
        if (embedded) window.parent.postMessage(msg, '*');
    };
    const el = (tag, attrs, ...children) => {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs || {})) {
            if (v === false || v === undefined || v === null) continue;
            if (k === 'text') e.textContent = v;
            else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
            else e.setAttribute(k, v === true ? '' : v);
        }
        for (const c of children) if (c) e.append(c);
        return e;
    };
    const show = (...nodes) => {
        app.replaceChildren(...nodes);
        app.setAttribute('aria-busy', 'false');
    };
    const say = (text, ok) => {
        status.textContent = text;
        status.classList.toggle('ok', !!ok);
        status.hidden = !text;
    };

    // Readable sentences for the error codes an end user can meet.
    const sentence = (code, message, name) => {
        switch (code) {
            case 'connection_test_failed':
                return `That key was refused by ${name}. Check it and try again.`;
            case 'unknown_connect_session_token':
            case 'invalid_connect_session_token_format':
                return 'This link has expired or is no longer valid. Ask the application for a new one.';
            case 'too_many_attempts':
                return 'Too many attempts with this link. Ask the application for a new one.';
            case 'integration_not_allowed':
                return `This link does not allow connecting ${name}.`;
            case 'invalid_connection':
                return 'The account this link was made to update no longer exists.';
            default:
                return message || 'Something went wrong. Try again.';
        }
    };

    const api = async (method, path, body, withBearer) => {
        const headers = { Accept: 'application/json' };
        if (withBearer) headers.Authorization = `Bearer ${token}`;
        if (body !== undefined) headers['Content-Type'] = 'application/json';
        const res = await fetch(new URL(path, apiBase), {
            method, headers, body: body === undefined ? undefined : JSON.stringify(body),
            credentials: 'omit', referrerPolicy: 'no-referrer'
        });
        let json = null;
        try { json = await res.json(); } catch { json = null; }
        if (!res.ok) {
            const err = new Error(json?.error?.message || `HTTP ${res.status}`);
            err.code = json?.error?.code || 'unknown_error';
            throw err;
        }
        return json;
    };

    const list = () => {
        title.textContent = 'Connect an account';
        back.hidden = true;
        say('');
        if (integrations.length === 0) {
            show(el('p', { class: 'muted', text: 'There is nothing to connect with this link.' }));
            return;
        }
        if (integrations.length === 1) {
            form(integrations[0], false);
            return;
        }
        const items = integrations.map((i) => el('li', null,
            el('button', { type: 'button', onclick: () => form(i, true), 'data-key': i.unique_key },
                el('span', { text: i.display_name }),
                el('span', { class: 'mode', text: i.auth_mode === 'BASIC' ? 'user name and password' : i.auth_mode === 'OAUTH2' ? 'sign in' : 'API key' }))));
        show(el('p', { class: 'muted', text: 'Choose what to connect:' }), el('ul', { class: 'integrations' }, ...items));
        app.querySelector('button')?.focus();
    };

    const form = (integration, canGoBack) => {
        title.textContent = `Connect ${integration.display_name}`;
        back.hidden = !canGoBack;
        say('');
        const fields = [];
        for (const f of integration.credentials) {
            fields.push(el('label', null, f.label, el('input', {
                name: `credentials.${f.name}`, type: f.secret ? 'password' : 'text', autocomplete: 'off',
                spellcheck: 'false', required: f.name !== 'password' && f.name !== 'username'
            })));
        }
        for (const p of integration.params) {
            fields.push(el('label', null, p.label,
                p.required ? null : el('span', { class: 'hint', text: 'optional' }),
                el('input', { name: `params.${p.name}`, type: 'text', autocomplete: 'off', spellcheck: 'false', required: p.required })));
        }
        const oauth = integration.auth_mode === 'OAUTH2';
        const submit = el('button', { type: 'submit', class: 'primary', text: oauth ? `Continue with ${integration.display_name}` : 'Connect' });
        const f = el('form', { novalidate: false }, ...fields, submit);
        f.addEventListener('submit', async (ev) => {
            ev.preventDefault();
            say('');
            if (oauth) {
                popup(integration, f, submit);
                return;
            }
            const credentials = {};
            const params = new URLSearchParams({ connect_session_token: token });
            for (const input of f.querySelectorAll('input')) {
                const [kind, name] = input.name.split(/\.(.*)/s);
                if (kind === 'credentials') credentials[name] = input.value;
                else if (input.value !== '') params.append(`params[${name}]`, input.value);
            }
            const route = integration.auth_mode === 'BASIC' ? 'basic' : 'api-key';
            if (route === 'basic') {
                credentials.username ??= '';
                credentials.password ??= '';
            }
            submit.disabled = true;
            submit.textContent = 'Checking…';
            try {
                const path = `api-auth/${route}/${encodeURIComponent(integration.unique_key)}?${params.toString()}`;
                const res = await api('POST', path, credentials, false);
                connected(integration, res.connectionId, res.providerConfigKey);
            } catch (e) {
                const text = sentence(e.code, e.message, integration.display_name);
                say(text);
                post({ type: 'error', payload: { errorType: e.code, errorMessage: text } });
                submit.disabled = false;
                submit.textContent = 'Connect';
                f.querySelector('input')?.focus();
            }
        });
        show(f);
        f.querySelector('input')?.focus();
    };

    const connected = (integration, connectionId, providerConfigKey) => {
        post({ type: 'connect', payload: { connectionId, providerConfigKey } });
        back.hidden = true;
        show(el('div', { class: 'done' },
            el('div', { class: 'check', 'aria-hidden': 'true', text: '✓' }),
            el('p', { class: 'muted', text: 'You can close this window.' })));
        say(`${integration.display_name} is connected.`, true);
        document.getElementById('close').focus();
    };

    // OAuth2: the provider's consent in a popup, opened at once (a popup blocker allows it only
    // inside the click); its callback page posts the outcome back to this window.
    const popup = (integration, f, submit) => {
        const params = new URLSearchParams({ connect_session_token: token });
        for (const input of f.querySelectorAll('input')) {
            const [, name] = input.name.split(/\.(.*)/s);
            if (input.value !== '') params.append(`params[${name}]`, input.value);
        }
        const url = new URL(`oauth/connect/${encodeURIComponent(integration.unique_key)}?${params.toString()}`, apiBase);
        const win = window.open(url.href, '_blank', 'width=500,height=600,scrollbars=yes,resizable=yes');
        if (!win) {
            say('Your browser blocked the sign-in window. Allow pop-ups for this page and try again.');
            post({ type: 'error', payload: { errorType: 'blocked_by_browser', errorMessage: 'Modal blocked by browser' } });
            return;
        }
        submit.disabled = true;
        submit.textContent = 'Waiting for the sign-in window…';
        let channel = null;
        const done = (data, source) => {
            window.removeEventListener('message', onMessage);
            if (channel) channel.close();
            clearInterval(poll);
            try { (source || win).postMessage({ type: 'nango_oauth_callback_ack' }, '*'); } catch { /* closed */ }
            submit.disabled = false;
            submit.textContent = `Continue with ${integration.display_name}`;
            if (data.type === 'nango_oauth_callback_success') {
                connected(integration, data.payload?.connectionId, data.payload?.providerConfigKey || integration.unique_key);
            } else {
                const text = `${integration.display_name} did not authorize the connection: ${data.payload?.message || 'unknown error'}`;
                say(text);
                post({ type: 'error', payload: { errorType: data.payload?.errorType || 'unknown_error', errorMessage: text } });
            }
        };
        const onMessage = (ev) => {
            if (ev.origin !== apiBase.origin || !ev.data || typeof ev.data.type !== 'string') return;
            if (ev.data.type.startsWith('nango_oauth_callback_') && ev.data.type !== 'nango_oauth_callback_ack') done(ev.data, ev.source);
        };
        window.addEventListener('message', onMessage);
        try {
            channel = new BroadcastChannel('nango-oauth-callback');
            channel.onmessage = (ev) => { if (ev.data?.type?.startsWith('nango_oauth_callback_') && ev.data.type !== 'nango_oauth_callback_ack') done(ev.data, null); };
        } catch { channel = null; }
        const poll = setInterval(() => {
            if (win.closed) {
                window.removeEventListener('message', onMessage);
                if (channel) channel.close();
                clearInterval(poll);
                submit.disabled = false;
                submit.textContent = `Continue with ${integration.display_name}`;
            }
        }, 500);
    };

    const start = async () => {
        if (!token) {
            show(el('p', { class: 'muted', text: 'This link is missing its session. Ask the application for a new one.' }));
            return;
        }
        try {
            const [session, ints] = await Promise.all([
                api('GET', 'connect/session', undefined, true),
                api('GET', 'connect/integrations', undefined, true)
            ]);
            if (!session.data) throw new Error('no session');
            integrations = ints.data;
            list();
        } catch (e) {
            const text = sentence(e.code, e.message, 'the provider');
            show(el('p', { text }));
            post({ type: 'error', payload: { errorType: e.code, errorMessage: text } });
        }
    };

    document.getElementById('close').addEventListener('click', () => {
        post({ type: 'close' });
        if (!embedded) window.close();
    });
    back.addEventListener('click', list);
    document.addEventListener('keydown', (ev) => {
        if (ev.key === 'Escape') post({ type: 'close' });
    });

    if (embedded) {
        // openConnectUI answers `ready` with the token; a token in the URL wins.
        window.addEventListener('message', (ev) => {
            if (ev.source !== window.parent || !ev.data || ev.data.type !== 'session_token') return;
            if (!token && typeof ev.data.sessionToken === 'string') {
                token = ev.data.sessionToken;
                start();
            }
        });
        post({ type: 'ready' });
        if (token) start();
        else setTimeout(() => { if (!token) start(); }, 10000);
    } else {
        start();
    }
})();
