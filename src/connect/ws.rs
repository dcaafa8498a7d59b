//! The WebSocket `@nangohq/frontend` opens before an OAuth popup, on the Connect listener's
//! root: the server names the client (`{"message_type":"connection_ack","ws_client_id":…}`),
//! the SDK passes that id to `/oauth/connect/{key}` as `ws_client_id`, and the outcome comes
//! back on the socket as Nango sends it: `{"message_type":"success", "provider_config_key",
//! "connection_id", "is_pending"}` or `{"message_type":"error", "provider_config_key",
//! "connection_id", "error_type", "error_desc"}`.
//!
//! A minimal RFC 6455 server: the handshake, unfragmented text frames out, and of what the
//! client sends only close and ping are acted on (its frames are read to stay in step, at
//! most [`MAX_FRAME`] bytes each). A socket lives at most [`MAX_LIFE`] (an OAuth state lives
//! ten minutes) and at most [`MAX_CLIENTS`] are open at once. The socket carries no credential
//! and no secret: only ids and the outcome.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::api::ApiError;
use crate::body::ProxyBody;
use crate::store::sessions::SessionStore;

/// How long a socket may stay open.
const MAX_LIFE: Duration = Duration::from_secs(15 * 60);
/// Sockets open at once, over the process.
const MAX_CLIENTS: usize = 10_000;
/// The largest frame read from a client.
const MAX_FRAME: u64 = 64 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

type Hub = Mutex<HashMap<String, mpsc::UnboundedSender<String>>>;

/// The open sockets by client id.
fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<String, mpsc::UnboundedSender<String>>> {
    hub().lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `headers` ask for a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `Sec-WebSocket-Accept` for a key.
fn accept_value(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Answers the handshake (101) and serves the socket on its own task.
pub fn accept(req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_websocket", m);
    let h = req.headers();
    let key = h
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?
        .to_string();
    if h.get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(bad("only WebSocket version 13 is served"));
    }
    if lock().len() >= MAX_CLIENTS {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "too many WebSocket clients are open",
        ));
    }
    let accept = HeaderValue::from_str(&accept_value(&key))
        .map_err(|_| bad("Sec-WebSocket-Key is not valid"))?;
    let mut req = req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut res = Response::new(crate::body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(res)
}

/// One unmasked text frame (server to client).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Reads one client frame: its opcode and (unmasked) payload; `None` at the end or on a frame
/// that breaks the rules.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.ok()?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await.ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    // Clients must mask (RFC 6455 §5.1); a frame too large is not read.
    if !masked || len > MAX_FRAME {
        return None;
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    r.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((opcode, payload))
}

async fn serve<IO>(io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let id = crate::api::write::new_id();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    lock().insert(id.clone(), tx);
    let ack = json!({"message_type": "connection_ack", "ws_client_id": id}).to_string();
    let life = tokio::time::sleep(MAX_LIFE);
    tokio::pin!(life);
    if wr.write_all(&text_frame(ack.as_bytes())).await.is_ok() {
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    if wr.write_all(&text_frame(msg.as_bytes())).await.is_err() {
                        break;
                    }
                }
                frame = read_frame(&mut rd) => match frame {
                    // Close: answered, then the socket ends.
                    Some((0x8, _)) | None => {
                        let _ = wr.write_all(&[0x88, 0x00]).await;
                        break;
                    }
                    Some((0x9, payload)) if payload.len() < 126 => {
                        let mut pong = vec![0x8a, payload.len() as u8];
                        pong.extend_from_slice(&payload);
                        if wr.write_all(&pong).await.is_err() {
                            break;
                        }
                    }
                    Some(_) => {}
                },
                () = &mut life => {
                    let _ = wr.write_all(&[0x88, 0x00]).await;
                    break;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
    lock().remove(&id);
}

/// Sends `text` to the socket `ws_client_id` if it is open in this process; whether it was.
fn deliver(ws_client_id: &str, text: String) -> bool {
    match lock().get(ws_client_id) {
        Some(tx) => tx.send(text).is_ok(),
        None => false,
    }
}

/// Sends `message` to the socket `ws_client_id`: here if it is open here, else through the
/// session store to the other replicas of a fleet, one of which may hold it.
fn publish(sessions: &dyn SessionStore, ws_client_id: &str, message: Value) {
    let text = message.to_string();
    if !deliver(ws_client_id, text.clone()) {
        sessions.relay_socket(ws_client_id, &text);
    }
}

/// Hands the messages other replicas relay to this process's sockets, from the first socket
/// on (a replica with no socket has nothing to hand them to); once per store.
pub fn forward_relayed(sessions: &dyn SessionStore) {
    if let Some(mut rx) = sessions.relayed_sockets() {
        tokio::spawn(async move {
            while let Some((id, text)) = rx.recv().await {
                deliver(&id, text);
            }
        });
    }
}

/// The `success` message of an authorization.
pub fn success(
    sessions: &dyn SessionStore,
    ws_client_id: &str,
    provider_config_key: &str,
    connection_id: &str,
) {
    publish(
        sessions,
        ws_client_id,
        json!({
            "message_type": "success",
            "provider_config_key": provider_config_key,
            "connection_id": connection_id,
            "is_pending": false,
        }),
    );
}

/// The `error` message of an authorization.
pub fn error(
    sessions: &dyn SessionStore,
    ws_client_id: &str,
    provider_config_key: &str,
    error_type: &str,
    error_desc: &str,
) {
    publish(
        sessions,
        ws_client_id,
        json!({
            "message_type": "error",
            "provider_config_key": provider_config_key,
            "connection_id": Value::Null,
            "error_type": error_type,
            "error_desc": error_desc,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_answer_is_rfc_6455s() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_value("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_are_sized_three_ways() {
        assert_eq!(text_frame(b"hi"), [0x81, 2, b'h', b'i']);
        assert_eq!(&text_frame(&[b'x'; 200])[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&text_frame(&vec![b'x'; 70_000])[..2], &[0x81, 127]);
    }

    #[tokio::test]
    async fn client_frames_are_unmasked_and_bounded() {
        let mask = [1u8, 2, 3, 4];
        let payload: Vec<u8> = b"ping"
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let mut frame = vec![0x89, 0x80 | 4];
        frame.extend_from_slice(&mask);
        frame.extend_from_slice(&payload);
        let mut r = &frame[..];
        assert_eq!(read_frame(&mut r).await, Some((0x9, b"ping".to_vec())));
        let unmasked = [0x81u8, 1, b'x'];
        assert_eq!(read_frame(&mut &unmasked[..]).await, None);
        let huge = [0x81u8, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(read_frame(&mut &huge[..]).await, None);
    }
}
