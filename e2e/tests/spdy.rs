//! Exec, Attach and PortForward over SPDY/3.1 (what kubelet and crictl use
//! by default) and Attach over WebSocket too, with berth's own test client;
//! `interop.rs` drives the same through client-go's libraries.

use std::time::Duration;

use berth_e2e::spdy::{remote_command, SpdyClient};
use berth_e2e::{cri, Fixture};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const V4: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

async fn exec_url(f: &mut Fixture, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
        ..Default::default()
    };
    f.cri.runtime.exec(req).await.unwrap().into_inner().url
}

fn status(error_stream: &str) -> serde_json::Value {
    serde_json::from_str(error_stream).unwrap_or_else(|e| panic!("error stream {error_stream:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_output_exit_codes_stdin_tty_and_negotiation() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("spdy");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("target", &["sleep", "1000"]), &cfg).await;

    // Bad requests are refused at the RPC, naming what is wrong.
    let bad = |container_id: &str, cmd: &[&str], streams: bool| cri::ExecRequest {
        container_id: container_id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: streams,
        stderr: false,
        ..Default::default()
    };
    for (req, code, needle) in [
        (bad("", &["true"], true), tonic::Code::InvalidArgument, "container_id"),
        (bad(&c, &[], true), tonic::Code::InvalidArgument, "cmd"),
        (bad(&c, &["true"], false), tonic::Code::InvalidArgument, "stdout"),
        (bad("0123456789abcdef", &["true"], true), tonic::Code::NotFound, "0123456789abcdef"),
    ] {
        let e = f.cri.runtime.exec(req).await.unwrap_err();
        assert_eq!((e.code(), e.message().contains(needle)), (code, true), "{e:?}");
    }

    let mut s = SpdyClient::connect(&exec_url(&mut f, &c, &["echo", "hi"], false, false).await, V4).await.unwrap();
    assert_eq!(s.protocol, "v4.channel.k8s.io");
    let out = remote_command(&mut s, None, None).await;
    assert_eq!(out.stdout, "hi\n");
    assert_eq!(status(&out.error)["status"], "Success");

    let mut s = SpdyClient::connect(&exec_url(&mut f, &c, &["sh", "-c", "echo oops >&2; exit 3"], false, false).await, V4).await.unwrap();
    let out = remote_command(&mut s, None, None).await;
    assert_eq!(out.stderr, "oops\n");
    let st = status(&out.error);
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "3");

    // stdin, ended by the stdin stream's FIN.
    let mut s = SpdyClient::connect(&exec_url(&mut f, &c, &["cat"], true, false).await, V4).await.unwrap();
    let out = remote_command(&mut s, Some(b"hello over spdy\n"), None).await;
    assert_eq!(out.stdout, "hello over spdy\n");
    assert_eq!(status(&out.error)["status"], "Success");

    // A TTY: the size from the resize stream is what `stty size` sees.
    let mut s = SpdyClient::connect(&exec_url(&mut f, &c, &["sh", "-c", "sleep 0.5; stty size; tty"], true, true).await, V4).await.unwrap();
    let out = remote_command(&mut s, Some(b""), Some((120, 33))).await;
    assert!(out.stdout.contains("33 120"), "{out:?}");
    assert!(out.stdout.contains("/dev/pts/"), "{out:?}");

    // An older client: v2 reports a failure as plain text.
    let mut s =
        SpdyClient::connect(&exec_url(&mut f, &c, &["sh", "-c", "exit 4"], false, false).await, &["v2.channel.k8s.io"]).await.unwrap();
    assert_eq!(s.protocol, "v2.channel.k8s.io");
    let out = remote_command(&mut s, None, None).await;
    assert!(out.error.contains("non-zero exit code") && out.error.contains('4'), "{out:?}");

    // No common protocol: 403 naming both sides; the token is spent.
    let url = exec_url(&mut f, &c, &["true"], false, false).await;
    let refused = SpdyClient::connect(&url, &["v9.channel.k8s.io"]).await.err().expect("refused");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("v9.channel.k8s.io") && refused.body.contains("v4.channel.k8s.io"), "{}", refused.body);
    assert_eq!(SpdyClient::connect(&url, V4).await.err().expect("used token").status, 404);

    // 20 at once, each sees its own output.
    let mut urls = Vec::new();
    for i in 0..20 {
        urls.push(exec_url(&mut f, &c, &["sh", "-c", &format!("echo run-{i}")], false, false).await);
    }
    let runs = urls.into_iter().enumerate().map(|(i, url)| async move {
        let mut s = SpdyClient::connect(&url, V4).await.unwrap();
        let out = remote_command(&mut s, None, None).await;
        assert_eq!(out.stdout, format!("run-{i}\n"));
    });
    futures::future::join_all(runs).await;

    // A client that disconnects mid-stream: the command goes too, and berthd
    // holds no more fds than before.
    let fd_dir = format!("/proc/{}/fd", f.berthd.pid());
    let fds_before = std::fs::read_dir(&fd_dir).unwrap().count();
    let mut s = SpdyClient::connect(&exec_url(&mut f, &c, &["sleep", "778"], false, false).await, V4).await.unwrap();
    for t in ["error", "stdout", "stderr"] {
        s.open(&[("streamtype", t)]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(f.cri.sh(&c, "ps -o args").await.contains("sleep 778"));
    drop(s);
    assert!(f.cri.wait_process_gone(&c, "sleep 778").await, "the exec'd command outlived its SPDY client");
    settle(&fd_dir, fds_before, Duration::from_secs(3)).await;
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_two_connections_and_a_closed_port() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("spdy-pf");
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
    let mut s = SpdyClient::connect(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(s.protocol, "portforward.k8s.io");
    let e0 = s.open(&[("streamtype", "error"), ("port", "8080"), ("requestid", "0")]).await;
    let d0 = s.open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]).await;
    let e1 = s.open(&[("streamtype", "error"), ("port", "8081"), ("requestid", "1")]).await;
    let d1 = s.open(&[("streamtype", "data"), ("port", "8081"), ("requestid", "1")]).await;
    // Nothing listens on 9; its error stream says so.
    let e2 = s.open(&[("streamtype", "error"), ("port", "9"), ("requestid", "2")]).await;
    let d2 = s.open(&[("streamtype", "data"), ("port", "9"), ("requestid", "2")]).await;
    s.send(d1, b"ping-8081\n", true).await;
    let (data, replied) = s.collect(&[d0, d1, e2]).await;
    for id in [e0, d0, e1, d1, e2, d2] {
        assert!(replied.contains(&id), "stream {id} got no SYN_REPLY");
    }
    assert_eq!(String::from_utf8_lossy(&data[&d0]), "from-8080\n");
    assert_eq!(String::from_utf8_lossy(&data[&d1]), "ping-8081\n");
    let err = String::from_utf8_lossy(&data[&e2]).to_string();
    assert!(err.contains("port 9") && err.contains("refused"), "{err}");
    drop(s);

    // A pod server that never closes (sleep holds the connection): when the
    // client goes, over SPDY or WebSocket, berthd lets go of it all the same.
    f.cri.run(&pod, f.container("hold", &["nc", "-ll", "-p", "8082", "-e", "sleep", "1000"]), &cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fd_dir = format!("/proc/{}/fd", f.berthd.pid());
    let fds = || std::fs::read_dir(&fd_dir).unwrap().count();
    let before = fds();
    let url = f
        .cri
        .runtime
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8082] })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut s = SpdyClient::connect(&url, &["portforward.k8s.io"]).await.unwrap();
    s.open(&[("streamtype", "error"), ("port", "8082"), ("requestid", "0")]).await;
    let d = s.open(&[("streamtype", "data"), ("port", "8082"), ("requestid", "0")]).await;
    s.send(d, b"x", false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fds() > before, "the forwarded connection is up");
    drop(s);
    settle(&fd_dir, before, Duration::from_secs(5)).await;

    let url = f
        .cri
        .runtime
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8082] })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut req = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static("portforward.k8s.io"));
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fds() > before, "the forwarded connection is up");
    drop(ws);
    settle(&fd_dir, before, Duration::from_secs(5)).await;
    f.cri.remove_pod(&pod).await;
}

/// Waits up to `within` until berthd (its `/proc/PID/fd`) holds no more
/// fds than `before`.
async fn settle(fd_dir: &str, before: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = std::fs::read_dir(fd_dir).unwrap().count();
        if now <= before {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "berthd holds {now} fds, {before} before its streaming client came and left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stdio_container(f: &Fixture, name: &str, cmd: &[&str], stdin: bool, stdin_once: bool, tty: bool) -> cri::ContainerConfig {
    let mut c = f.container(name, cmd);
    c.stdin = stdin;
    c.stdin_once = stdin_once;
    c.tty = tty;
    c
}

async fn attach_url(f: &mut Fixture, id: &str, stdin: bool, tty: bool) -> String {
    let req = cri::AttachRequest { container_id: id.into(), stdin, tty, stdout: true, stderr: !tty, ..Default::default() };
    f.cri.runtime.attach(req).await.unwrap().into_inner().url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_output_stdin_once_and_a_terminal() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("attach");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();

    // A counter: an attached client sees it advance, over SPDY and WebSocket.
    let counter =
        f.cri.run(&pod, f.container("counter", &["sh", "-c", "i=0; while true; do echo n=$i; i=$((i+1)); sleep 0.1; done"]), &cfg).await;
    let mut s = SpdyClient::connect(&attach_url(&mut f, &counter, false, false).await, V4).await.unwrap();
    let _error = s.open(&[("streamtype", "error")]).await;
    let out = s.open(&[("streamtype", "stdout")]).await;
    let _err = s.open(&[("streamtype", "stderr")]).await;
    let mut seen = String::new();
    while seen.matches("n=").count() < 4 {
        match s.next().await {
            Some(berth_proto::spdy::frame::Frame::Data { stream_id, data, .. }) if stream_id == out => {
                seen.push_str(&String::from_utf8_lossy(&data))
            }
            Some(_) => {}
            None => panic!("attach ended early: {seen:?}"),
        }
    }
    let nums: Vec<u64> = seen.lines().filter_map(|l| l.strip_prefix("n=")).filter_map(|n| n.parse().ok()).collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    drop(s);
    // Detaching leaves the container running.
    assert_eq!(f.cri.status(&counter).await.state, cri::ContainerState::ContainerRunning as i32);

    let url = attach_url(&mut f, &counter, false, false).await.replacen("http://", "ws://", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static("v5.channel.k8s.io"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut seen = String::new();
    while seen.matches("n=").count() < 3 {
        let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await else {
            panic!("websocket attach stalled")
        };
        if b[0] == 1 {
            seen.push_str(&String::from_utf8_lossy(&b[1..]));
        }
    }
    drop(ws);

    // stdin + stdin_once: what the client sends reaches the container, and
    // closing it ends `cat`; the session reports Success.
    let cat = f.cri.run(&pod, stdio_container(&f, "cat", &["cat"], true, true, false), &cfg).await;
    let mut s = SpdyClient::connect(&attach_url(&mut f, &cat, true, false).await, V4).await.unwrap();
    let out = remote_command(&mut s, Some(b"through the monitor\n"), None).await;
    assert_eq!(out.stdout, "through the monitor\n");
    assert_eq!(status(&out.error)["status"], "Success");
    let st = f.cri.wait_exited(&cat, Duration::from_secs(10)).await;
    assert_eq!(st.exit_code, 0);
    // The output is in the CRI log as well.
    let log = std::fs::read_to_string(&st.log_path).unwrap();
    assert!(log.contains("stdout F through the monitor"), "{log}");

    // stdin without a stdin container is refused; so is a tty mismatch.
    let req =
        cri::AttachRequest { container_id: counter.clone(), stdin: true, tty: false, stdout: true, stderr: true, ..Default::default() };
    assert_eq!(f.cri.runtime.attach(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let req =
        cri::AttachRequest { container_id: counter.clone(), stdin: false, tty: true, stdout: true, stderr: false, ..Default::default() };
    assert_eq!(f.cri.runtime.attach(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // A TTY container: its stdio is a terminal from its own devpts; the
    // attach resize reaches it, and `exit` ends it.
    let shell = f.cri.run(&pod, stdio_container(&f, "shell", &["sh"], true, false, true), &cfg).await;
    let mut s = SpdyClient::connect(&attach_url(&mut f, &shell, true, true).await, V4).await.unwrap();
    let out = remote_command(&mut s, Some(b"sleep 0.3; stty size; tty; exit 5\n"), Some((77, 22))).await;
    assert!(out.stdout.contains("22 77"), "{out:?}");
    assert!(out.stdout.contains("/dev/pts/0"), "{out:?}");
    assert_eq!(f.cri.wait_exited(&shell, Duration::from_secs(10)).await.exit_code, 5);
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = berth_e2e::tls::ca_and_server_cert(dir.path());
    let (cert, key, ca) = (certs.cert, certs.key, certs.ca);
    let config = format!("[stream]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n", cert.display().to_string(), key.display().to_string());
    let mut f = Fixture::start_with_config(&config).await;
    let cfg = f.pod("tls");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("target", &["sleep", "1000"]), &cfg).await;
    let url = exec_url(&mut f, &c, &["echo", "over tls"], false, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // Plain HTTP on the TLS port gets no answer a client could take for one.
    let host = url.trim_start_matches("https://").split('/').next().unwrap().to_string();
    let mut plain = tokio::net::TcpStream::connect(&host).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET /exec/x HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1"), "{:?}", String::from_utf8_lossy(&buf));

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca).unwrap();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)).connect(name, tcp).await.expect("TLS handshake");
    let mut s = SpdyClient::upgrade(Box::new(tls), &url, V4).await.unwrap();
    let out = remote_command(&mut s, None, None).await;
    assert_eq!(out.stdout, "over tls\n");
    assert_eq!(status(&out.error)["status"], "Success");
    f.cri.remove_pod(&pod).await;
}
