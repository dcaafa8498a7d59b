//! The upstream connection pool through the real binary: connections are reused across
//! requests (HTTP/1.1 and HTTP/2), a response cut short never leaves its connection in the
//! pool, and connections the upstream closes while idle are replaced without an error.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::client::{proxy_headers, TestClient};
use support::sidekey::sidekey;
use support::upstream::{ok_json, reply, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(base: &str) -> (String, String) {
    let providers = format!(
        "plain:\n  auth_mode: API_KEY\n  proxy:\n    base_url: {base}\n    headers: {{authorization: \"Bearer ${{apiKey}}\"}}\n"
    );
    let vault = "integrations:\n  - {unique_key: plain, provider: plain}\nconnections:\n  - {connection_id: c1, provider_config_key: plain, credentials: {type: API_KEY, apiKey: k}}\n".to_string();
    (providers, vault)
}

/// Five GETs in a row through `sk`, each answered 200.
async fn five_requests(sk: &support::sidekey::Sidekey) {
    let c = TestClient::default();
    for i in 0..5 {
        let res = c
            .proxy(&sk.url(""), &format!("/n/{i}"), "c1", "plain")
            .await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
}

#[tokio::test]
async fn sequential_requests_share_one_http1_connection() {
    let up = Upstream::start(ok_json()).await;
    let (p, v) = config(&up.url(""));
    let sk = sidekey(&p, &v).start();
    five_requests(&sk).await;
    assert_eq!(up.count(), 5);
    assert_eq!(
        up.connections(),
        1,
        "every request after the first reused it"
    );
    let r = up.requests();
    assert!(r.iter().all(|r| r.version == http::Version::HTTP_11));
    assert_eq!(
        r[0].header("host"),
        Some(format!("127.0.0.1:{}", up.port()).as_str())
    );
}

#[tokio::test]
async fn sequential_requests_share_one_http2_connection() {
    let (up, _dir, args) = support::tls_upstream(ok_json()).await;
    let (p, v) = config("https://api.test");
    let sk = sidekey(&p, &v).args(args).start();
    five_requests(&sk).await;
    assert_eq!(up.connections(), 1);
    let r = up.requests();
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|r| r.version == http::Version::HTTP_2));
    assert_eq!(r[0].uri.authority().map(|a| a.as_str()), Some("api.test"));
}

#[tokio::test]
async fn a_response_cut_short_does_not_go_back_to_the_pool() {
    // /big streams 64 MiB slowly enough that the caller hangs up long before the end.
    let up = Upstream::start_raw(Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path() != "/big" {
                return reply(200, "small");
            }
            let chunks = futures_util::stream::unfold(0u32, |i| async move {
                if i == 1024 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                Some((
                    Ok::<_, support::upstream::BoxError>(Frame::data(chunk)),
                    i + 1,
                ))
            });
            let mut r = reply(200, "");
            *r.body_mut() = StreamBody::new(chunks).boxed();
            r.headers_mut().insert(
                "content-length",
                (64u64 << 20).to_string().parse().expect("v"),
            );
            r
        })
    }))
    .await;
    let (p, v) = config(&up.url(""));
    let sk = sidekey(&p, &v).start();
    {
        let c = TestClient::default();
        let res = c
            .send_streaming(
                "GET",
                &sk.url("/proxy/big"),
                &proxy_headers("c1", "plain"),
                support::upstream::body(""),
            )
            .await;
        assert_eq!(res.status(), 200);
        let mut b = res.into_body();
        let first = b.frame().await.expect("a frame").expect("data");
        assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
        // Dropping the client closes the caller's connection mid-body.
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = TestClient::default()
        .proxy(&sk.url(""), "/small", "c1", "plain")
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "small", "the answer came on a clean connection");
    assert_eq!(
        up.connections(),
        2,
        "the half-read connection was not reused"
    );
}

/// A bare HTTP/1.1 server that answers one request per connection, keep-alive implied, then
/// closes the socket after `linger` without saying so.
async fn closes_after_each_answer(linger: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn connections_the_upstream_closed_while_idle_are_replaced() {
    let (base, accepted) = closes_after_each_answer(Duration::from_millis(20)).await;
    let (p, v) = config(&base);
    let sk = sidekey(&p, &v).start();
    let c = TestClient::default();
    for _ in 0..3 {
        let res = c.proxy(&sk.url(""), "/x", "c1", "plain").await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.text(), "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
