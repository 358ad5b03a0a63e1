//! Latency of a non-TTY exec of `true`: ExecSync, and Exec over each
//! streaming protocol, WebSocket and SPDY (RPC + upgrade + run + status).
//! `cargo bench -p berth-e2e --bench exec`

use std::time::{Duration, Instant};

use berth_e2e::{cri, Fixture};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const RUNS: usize = 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    berth_e2e::bench::main(run())
}

async fn run() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("bench-exec");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("t", &["sleep", "1000"]), &cfg).await;
    let (mut sync, mut ws, mut spdy) = (Vec::new(), Vec::new(), Vec::new());
    let exec_true =
        cri::ExecRequest { container_id: c.clone(), cmd: vec!["true".into()], stdout: true, stderr: true, ..Default::default() };
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = f.cri.exec(&c, &["true"], 10).await.unwrap();
        assert_eq!(r.exit_code, 0);
        sync.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let url = f.cri.runtime.exec(exec_true.clone()).await.unwrap().into_inner().url;
        let mut r = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
        r.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static("v5.channel.k8s.io"));
        let (mut s, _) = tokio_tungstenite::connect_async(r).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), s.next()).await {}
        ws.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let url = f.cri.runtime.exec(exec_true.clone()).await.unwrap().into_inner().url;
        let mut s = berth_e2e::spdy::SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
        let out = berth_e2e::spdy::remote_command(&mut s, None, None).await;
        assert!(out.error.contains("Success"), "{out:?}");
        spdy.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("non-TTY exec of `true`, {RUNS} runs (medians)");
    println!("  ExecSync                 {:7.2} ms", median(sync));
    println!("  Exec over WebSocket (v5) {:7.2} ms", median(ws));
    println!("  Exec over SPDY/3.1 (v4)  {:7.2} ms", median(spdy));
    f.cri.remove_pod(&pod).await;
}
