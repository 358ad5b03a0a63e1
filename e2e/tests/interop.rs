//! berth's streaming server driven by an independent client built on the
//! libraries under client-go (spdystream, gorilla/websocket), the way
//! kubectl, kubelet's proxy and the CRI client tools drive it: exec and
//! attach over SPDY and over WebSocket (v5, which must end with a Close
//! frame of status 1000), port-forward over SPDY and tunnelled through a
//! WebSocket (KEP-4006), to a pod network and to the host's.

use std::time::Duration;

use berth_e2e::interop::{run_ok, Run};
use berth_e2e::{cri, Fixture};

fn status(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.status).unwrap_or_else(|e| panic!("error channel {:?}: {e}", r.status))
}

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

async fn attach_url(f: &mut Fixture, id: &str, tty: bool) -> String {
    let req = cri::AttachRequest { container_id: id.into(), stdin: true, tty, stdout: true, stderr: !tty, ..Default::default() };
    f.cri.runtime.attach(req).await.unwrap().into_inner().url
}

async fn port_forward_url(f: &mut Fixture, pod: &str, port: u16) -> String {
    let req = cri::PortForwardRequest { pod_sandbox_id: pod.into(), port: vec![port.into()] };
    f.cri.runtime.port_forward(req).await.unwrap().into_inner().url
}

/// The client's arguments for `transport` ("spdy" adds nothing).
fn with(transport: &str, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if transport != "spdy" {
        v.push(format!("-{transport}"));
    }
    v
}

async fn client(args: Vec<String>, stdin: &[u8]) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&a, stdin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_as_client_go_over_spdy_and_websocket() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("interop-exec");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("target", &["sleep", "1000"]), &cfg).await;
    for transport in ["spdy", "ws"] {
        // The exit code travels in the status; client-go reads it there.
        let url = exec_url(&mut f, &c, &["sh", "-c", "echo hi; echo oops >&2; exit 3"], false, false).await;
        let r = client(with(transport, &["exec", &url]), b"").await;
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("hi\n", "oops\n"), "{transport}");
        let st = status(&r);
        assert_eq!((&st["status"], &st["reason"]), (&"Failure".into(), &"NonZeroExitCode".into()), "{transport}: {st}");
        assert_eq!(st["details"]["causes"][0]["message"], "3", "{transport}: {st}");

        // stdin to the end (v5 closes it with its CLOSE message).
        let url = exec_url(&mut f, &c, &["cat"], true, false).await;
        let r = client(with(transport, &["exec", &url, "-stdin"]), b"client-go says hello\n").await;
        assert_eq!(r.stdout, "client-go says hello\n", "{transport}");
        assert_eq!(status(&r)["status"], "Success", "{transport}");

        // A terminal, sized by the client's resize message.
        let url = exec_url(&mut f, &c, &["sh", "-c", "sleep 0.5; stty size"], true, true).await;
        let r = client(with(transport, &["exec", &url, "-stdin", "-tty"]), b"").await;
        assert!(r.stdout.contains("17 91"), "{transport}: {:?}", r.stdout);

        // A large output arrives whole.
        let url = exec_url(&mut f, &c, &["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"], false, false).await;
        let r = client(with(transport, &["exec", &url]), b"").await;
        assert_eq!(r.stdout.len(), 3_000_000, "{transport}");

        // Attach to a container's stdin (stdin_once: closing it ends the
        // container, and with it the session).
        let mut cat = f.container(&format!("cat-{transport}"), &["cat"]);
        (cat.stdin, cat.stdin_once) = (true, true);
        let id = f.cri.run(&pod, cat, &cfg).await;
        let url = attach_url(&mut f, &id, false).await;
        let r = client(with(transport, &["exec", &url, "-stdin"]), b"attached\n").await;
        assert_eq!(r.stdout, "attached\n", "{transport}");

        // Attach to a terminal.
        let mut shell = f.container(&format!("tty-{transport}"), &["sh"]);
        (shell.stdin, shell.stdin_once, shell.tty) = (true, true, true);
        let id = f.cri.run(&pod, shell, &cfg).await;
        let url = attach_url(&mut f, &id, true).await;
        let r = client(with(transport, &["exec", &url, "-stdin", "-tty"]), b"sleep 0.3; stty size; exit 5\n").await;
        assert!(r.stdout.contains("17 91"), "{transport}: {:?}", r.stdout);
        assert_eq!(f.cri.wait_exited(&id, Duration::from_secs(10)).await.exit_code, 5);
    }
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_as_kubectl_over_spdy_and_the_websocket_tunnel() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("interop-pf");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    f.cri.run(&pod, f.container("web", &["nc", "-ll", "-p", "8080", "-e", "cat"]), &cfg).await;

    // A host-network pod: its localhost is the node's.
    let mut host_cfg = f.pod("interop-pf-host");
    host_cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().network = 2; // NODE
    let host_pod = f.cri.run_pod(host_cfg.clone()).await.unwrap();
    let port = berth_e2e::registry::free_port();
    let mut web = f.container("web", &["nc", "-ll", "-p", &port.to_string(), "-e", "echo", "from-the-node"]);
    web.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().network = 2;
    f.cri.run(&host_pod, web, &host_cfg).await;

    let pod_ip = f.cri.pod_ip(&pod).await;
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect((pod_ip.as_str(), 8080)).is_ok() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the pods' servers are not listening");

    for transport in ["spdy", "tunnel"] {
        let url = port_forward_url(&mut f, &pod, 8080).await;
        let r = client(with(transport, &["portforward", &url, "8080"]), b"echo me\n").await;
        assert_eq!(r.stdout, "echo me\n", "{transport}: {}", r.stderr);

        let url = port_forward_url(&mut f, &host_pod, port).await;
        let p = port.to_string();
        let r = client(with(transport, &["portforward", &url, &p]), b"").await;
        assert_eq!(r.stdout, "from-the-node\n", "{transport}: {}", r.stderr);
    }
    f.cri.remove_pod(&host_pod).await;
    f.cri.remove_pod(&pod).await;
}
