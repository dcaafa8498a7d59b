//! The router: which handler answers a request, and what the caller must be allowed to do.
//!
//! `/proxy/…` and `/connections/{selector}/proxy/…` go to the request path ([`crate::proxy`]),
//! which checks the caller's key for the `proxy` scope itself (it loads the snapshot once for
//! the whole request). Management routes ([`crate::api`]) are authenticated here and checked
//! for the scope their method needs before their handler runs: a key without it gets 403
//! `forbidden` naming the scope. Connect routes (sessions, the auth routes the frontend SDK
//! calls) go to [`crate::connect`]. Nango routes sidekey does not serve answer 501
//! `not_supported`; anything else is the proxy's 404 `not_found`.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::api::{self, ApiError, ApiRequest};
use crate::app::App;
use crate::body::ProxyBody;
use crate::proxy::access_log::RequestLog;

/// Answers one request on the main listener. A management request's body is read and its
/// handler run on the app's background thread ([`crate::background`]), so its CPU is taken
/// only from what proxied requests leave; its access log is written here.
pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    if crate::proxy::route::route(path).is_some() {
        return crate::proxy::handle(&app.proxy, req).await;
    }
    if crate::connect::route(path, crate::connect::Listener::Main).is_some() {
        return crate::connect::handle(app, req, crate::connect::Listener::Main).await;
    }
    let unsupported = api::not_supported(path);
    if api::route(path).is_none() && !unsupported {
        return crate::proxy::handle(&app.proxy, req).await;
    }
    // Kept for the `Allow` header of a 405, once the request has been taken apart.
    let path = path.to_string();
    let (req, mut log) = RequestLog::start(req, &app.state.metrics);
    let work = management(app.clone(), req, unsupported);
    let res = match app.background.run(work).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        ))
    }) {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(code = e.code, "management request refused");
            log.set_error(e.code);
            let mut res = e.to_response();
            if res.status() == StatusCode::METHOD_NOT_ALLOWED {
                allow(&mut res, api::route(&path));
            }
            res
        }
    };
    log.respond(res)
}

async fn management(
    app: Arc<App>,
    req: Request<ProxyBody>,
    unsupported: bool,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let snapshot = app.state.snapshot.load_full();
    let scopes = crate::auth::authenticate(&parts.headers, &snapshot.secret_keys)?;
    drop(snapshot);
    if unsupported {
        return Err(api::not_supported_error(path));
    }
    let Some(route) = api::route(path) else {
        return Err(crate::error::ProxyError::NotFound(path.to_string()).into());
    };
    let Some(scope) = api::scope(&route, &parts.method) else {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method {} is not allowed on {path}", parts.method),
        ));
    };
    if !scopes.contains(scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("Insufficient scope. Required: {}", scope.name()),
        ));
    }
    let body = match parts.method {
        Method::POST | Method::PATCH | Method::PUT => api::read_json(&parts.headers, body).await?,
        _ => None,
    };
    let req = ApiRequest {
        method: &parts.method,
        query: parts.uri.query(),
        scopes,
        body,
    };
    api::respond(&app, &route, req).await
}

/// Every 405 says which methods the route has (RFC 9110 §15.5.6).
fn allow(res: &mut Response<ProxyBody>, route: Option<api::ApiRoute<'_>>) {
    let Some(route) = route else { return };
    if let Ok(v) = http::HeaderValue::from_str(&api::allowed_methods(&route)) {
        res.headers_mut().insert(http::header::ALLOW, v);
    }
}
