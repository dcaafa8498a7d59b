// The OAuth callback page's script: tells the window that opened the authorization (a Connect
// UI, or Nango's frontend SDK) how it ended, the way Nango's callback page does, then closes.
// The outcome is in the body's data attributes (set by sidekey, HTML-escaped).
'use strict';
(function () {
    const d = document.body.dataset;
    const ok = d.outcome === 'success';
    const message = ok
        ? { type: 'nango_oauth_callback_success', payload: { connectionId: d.connectionId, providerConfigKey: d.providerConfigKey } }
        : { type: 'nango_oauth_callback_error', payload: { message: d.message, errorType: d.errorType || 'connection_validation_failed' } };
    window.__nangoOAuthError = ok ? null : { message: d.message, errorType: d.errorType };
    try {
        if (window.opener) window.opener.postMessage(message, '*');
    } catch { /* the opener is gone or cross-origin-isolated */ }
    let channel = null;
    try {
        channel = new BroadcastChannel('nango-oauth-callback');
        channel.postMessage(message);
    } catch { channel = null; }
    const onAck = (ev) => {
        if (ev.data && ev.data.type === 'nango_oauth_callback_ack') window.close();
    };
    window.addEventListener('message', onAck);
    if (channel) channel.onmessage = onAck;
    if (ok) setTimeout(() => window.close(), 500);
})();
