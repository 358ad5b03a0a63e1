//! Exec over berth's streaming server with the WebSocket channel protocol
//! (what `crictl exec --transport websocket` and kubelet's WebSocket path
//! speak), token rules, concurrency and client disconnects.

use std::time::Duration;

use berth_e2e::{cri, Fixture};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn exec_url(f: &mut Fixture, id: &str, cmd: &[&str], stdin: bool) -> String {
    let req = cri::ExecRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), tty: false, stdin, stdout: true, stderr: true };
    f.cri.runtime.exec(req).await.unwrap().into_inner().url
}

async fn connect(url: &str) -> Ws {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"));
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "v5.channel.k8s.io");
    ws
}

/// Collects stdout, stderr and the error-channel status until the server closes.
async fn collect(ws: &mut Ws) -> (String, String, serde_json::Value) {
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), serde_json::Value::Null);
    while let Some(Ok(msg)) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("stream stalled") {
        if let Message::Binary(b) = msg {
            match b.first() {
                Some(1) => out.extend_from_slice(&b[1..]),
                Some(2) => err.extend_from_slice(&b[1..]),
                Some(3) => status = serde_json::from_slice(&b[1..]).unwrap(),
                _ => {}
            }
        }
    }
    (String::from_utf8_lossy(&out).into(), String::from_utf8_lossy(&err).into(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_output_exit_codes_stdin_and_tokens() {
    let mut f = Fixture::start_with_config("[stream]\ntoken_ttl_seconds = 2\n").await;
    let cfg = f.pod("stream");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("target", &["sleep", "1000"]), &cfg).await;

    let url = exec_url(&mut f, &c, &["echo", "hi"], false).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut ws = connect(&url).await;
    let (out, _, status) = collect(&mut ws).await;
    assert_eq!(out, "hi\n");
    assert_eq!(status["status"], "Success");

    // A used token is gone.
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 404);
    let bad = format!("{}deadbeef", &url[..url.rfind('/').unwrap() + 1]);
    assert_eq!(reqwest::get(&bad).await.unwrap().status(), 404);

    // Exit codes travel on the error channel.
    let mut ws = connect(&exec_url(&mut f, &c, &["sh", "-c", "echo oops >&2; exit 3"], false).await).await;
    let (_, err, status) = collect(&mut ws).await;
    assert_eq!(err, "oops\n");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // stdin, closed with v5's close frame.
    let mut ws = connect(&exec_url(&mut f, &c, &["cat"], true).await).await;
    ws.send(Message::Binary([&[0u8][..], b"hello stdin\n"].concat().into())).await.unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into())).await.unwrap();
    let (out, _, status) = collect(&mut ws).await;
    assert_eq!(out, "hello stdin\n");
    assert_eq!(status["status"], "Success");

    // An expired token.
    let url = exec_url(&mut f, &c, &["true"], false).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);

    // TTY is not built yet, and says so.
    let e = f.cri.runtime.exec(cri::ExecRequest { container_id: c.clone(), cmd: vec!["sh".into()], tty: true, stdin: true, stdout: true, stderr: false }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_execs_and_a_disconnect_leaves_nothing() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("stream-many");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("target", &["sleep", "1000"]), &cfg).await;
    let mut urls = Vec::new();
    for i in 0..20 {
        urls.push(exec_url(&mut f, &c, &["sh", "-c", &format!("echo run-{i}")], false).await);
    }
    let runs = urls.into_iter().enumerate().map(|(i, url)| async move {
        let mut ws = connect(&url).await;
        let (out, _, status) = collect(&mut ws).await;
        assert_eq!(out, format!("run-{i}\n"));
        assert_eq!(status["status"], "Success");
    });
    futures::future::join_all(runs).await;

    // A client that goes away mid-stream: the command is killed.
    let url = exec_url(&mut f, &c, &["sleep", "777"], false).await;
    let ws = connect(&url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(f.cri.sh(&c, "ps -o args").await.contains("sleep 777"));
    drop(ws);
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !f.cri.sh(&c, "ps -o args").await.contains("sleep 777") {
            gone = true;
            break;
        }
    }
    assert!(gone, "the exec'd command outlived its client");
    f.cri.remove_pod(&pod).await;
}
