//! Bodies stream through sidekey: a 1 GiB upload and a 1 GiB download pass with flat memory,
//! measured as the growth of sidekey's peak RSS (VmHWM), never as time.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::client::{proxy_headers, TestClient};
use support::sidekey::sidekey;
use support::upstream::{body, reply, Upstream};

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

static ZEROS: [u8; CHUNK] = [0u8; CHUNK];

/// A body of `total` zero bytes in 64 KiB chunks, allocating nothing per chunk.
fn zeros(total: u64) -> support::upstream::TestBody {
    let chunks = total.div_ceil(CHUNK as u64);
    let s = stream::iter((0..chunks).map(move |i| {
        let len = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok::<_, support::upstream::BoxError>(Frame::data(Bytes::from_static(&ZEROS[..len])))
    }));
    StreamBody::new(s).boxed()
}

async fn streaming_upstream() -> Upstream {
    Upstream::start_raw(Arc::new(|req| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if let Some(n) = path.strip_prefix("/down/") {
                let n: u64 = n.parse().unwrap_or(0);
                let mut r = reply(200, "");
                *r.body_mut() = zeros(n);
                r.headers_mut()
                    .insert("content-length", n.to_string().parse().expect("value"));
                return r;
            }
            // Count the upload without keeping it.
            let mut b = req.into_body();
            let mut seen: u64 = 0;
            while let Some(frame) = b.frame().await {
                match frame {
                    Ok(f) => seen += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return reply(500, "body error"),
                }
            }
            let mut r = reply(200, "");
            *r.body_mut() = body(seen.to_string());
            r
        })
    }))
    .await
}

fn config(base: &str) -> (String, String) {
    (
        format!("bulk: {{auth_mode: API_KEY, proxy: {{base_url: \"{base}\", headers: {{x-key: \"${{apiKey}}\"}}}}}}\n"),
        "integrations: [{unique_key: bulk, provider: bulk}]\nconnections:\n  - {connection_id: c, provider_config_key: bulk, credentials: {type: API_KEY, apiKey: k}}\n".to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_flat_memory() {
    let up = streaming_upstream().await;
    let (providers, vault) = config(&up.url(""));
    let sk = sidekey(&providers, &vault).start();
    let client = TestClient::default();
    let headers = proxy_headers("c", "bulk");

    // Warm up so the baseline includes pools, TLS-free client state and allocator arenas.
    let res = client
        .send_body(
            "POST",
            &sk.url("/proxy/up"),
            &headers,
            zeros(4 * CHUNK as u64),
        )
        .await;
    assert_eq!(res.text(), (4 * CHUNK).to_string());
    let baseline = sk.peak_rss_kib();

    // Upload: the upstream counts every byte.
    let res = client
        .send_body("POST", &sk.url("/proxy/up"), &headers, zeros(GIB))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), GIB.to_string(), "every uploaded byte arrived");

    // Download: counted as it streams, never held.
    let res = client
        .send_streaming(
            "GET",
            &sk.url(&format!("/proxy/down/{GIB}")),
            &headers,
            body(""),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], GIB.to_string().as_str());
    let mut b = res.into_body();
    let mut got: u64 = 0;
    while let Some(frame) = b.frame().await {
        let frame = frame.expect("download frame");
        if let Some(d) = frame.data_ref() {
            assert!(d.iter().all(|x| *x == 0));
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    let peak = sk.peak_rss_kib();
    let growth_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "sidekey peak RSS: baseline {baseline} KiB, after 2 GiB {peak} KiB (+{growth_mib:.1} MiB)"
    );
    assert!(
        growth_mib < 32.0,
        "memory grew by {growth_mib:.1} MiB while streaming 2 GiB: bodies are being buffered"
    );
}
