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
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
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

    // A TTY: the window size from the resize channel is what `stty size` sees,
    // and the process has a controlling terminal.
    let req = cri::ExecRequest {
        container_id: c.clone(),
        cmd: vec!["sh".into(), "-c".into(), "sleep 0.5; stty size; tty".into()],
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
        ..Default::default()
    };
    let url = f.cri.runtime.exec(req).await.unwrap().into_inner().url;
    let mut ws = connect(&url).await;
    ws.send(Message::Binary([&[4u8][..], br#"{"Width":100,"Height":40}"#].concat().into())).await.unwrap();
    let (out, _, status) = collect(&mut ws).await;
    assert!(out.contains("40 100"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert_eq!(status["status"], "Success");
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
    assert!(f.cri.wait_process_gone(&c, "sleep 777").await, "the exec'd command outlived its client");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward_to_two_ports_in_the_pod() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("pf");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    f.cri.run(&pod, f.container("a", &["nc", "-ll", "-p", "8080", "-e", "echo", "from-8080"]), &cfg).await;
    f.cri.run(&pod, f.container("b", &["nc", "-ll", "-p", "8081", "-e", "cat"]), &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = f
        .cri
        .runtime
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080, 8081] })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut req = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static("portforward.k8s.io"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // Port 8081 echoes what it gets (cat).
    ws.send(Message::Binary([&[2u8][..], b"ping-8081\n"].concat().into())).await.unwrap();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut headers = 0;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        let Message::Binary(b) = msg else { continue };
        let (ch, body) = (b[0], &b[1..]);
        if headers < 4
            && body.len() == 2
            && (ch <= 3)
            && (u16::from_le_bytes([body[0], body[1]]) == 8080 || u16::from_le_bytes([body[0], body[1]]) == 8081)
        {
            headers += 1;
            continue;
        }
        match ch {
            0 => first.extend_from_slice(body),
            2 => second.extend_from_slice(body),
            1 | 3 => panic!("error channel {ch}: {}", String::from_utf8_lossy(body)),
            _ => {}
        }
        if first.ends_with(b"\n") && second.ends_with(b"\n") {
            break;
        }
    }
    assert_eq!(headers, 4, "each channel starts with its port");
    assert_eq!(String::from_utf8_lossy(&first), "from-8080\n");
    assert_eq!(String::from_utf8_lossy(&second), "ping-8081\n");
    f.cri.remove_pod(&pod).await;
}
