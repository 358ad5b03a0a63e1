//! The independent streaming client: `interop/streamclient`, Go, built on
//! the libraries under client-go (spdystream, gorilla/websocket) from
//! Debian's packages. It drives berth's streaming server the way kubectl,
//! kubelet's proxy and the CRI client tools do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The client, built once per test process into the target directory (a
/// temp name renamed into place, so concurrent test processes do not clash).
pub fn stream_client() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = super::target_dir();
        let out = target.join("streamclient");
        let tmp = target.join(format!("streamclient.{}", std::process::id()));
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/streamclient");
        let st = Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", target.join("go-cache"))
            .env("GOFLAGS", "")
            .status()
            .expect("go (golang-go) is installed by deploy/deps.sh --test");
        assert!(
            st.success(),
            "building the Go stream client failed (golang-github-docker-spdystream-dev, golang-github-gorilla-websocket-dev)"
        );
        std::fs::rename(&tmp, &out).expect("moving the stream client into place");
        out
    })
}

/// What one run of the client gave.
#[derive(Debug)]
pub struct Run {
    /// Its stdout.
    pub stdout: String,
    /// Its stderr (its own errors start with `streamclient:`).
    pub stderr: String,
    /// What came on the error channel (exec's `metav1.Status`).
    pub status: String,
    /// It exited 0: the session ended as client-go accepts (for WebSocket,
    /// a Close frame with status 1000).
    pub ok: bool,
}

/// Runs the client with `args`, `stdin` as its input (then closed).
pub fn run(args: &[&str], stdin: &[u8]) -> Run {
    let status_file = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(stream_client())
        .args(args)
        .env("STREAMCLIENT_STATUS", status_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the stream client");
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let out = child.wait_with_output().expect("waiting for the stream client");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        status: std::fs::read_to_string(status_file.path()).unwrap_or_default(),
        ok: out.status.success(),
    }
}

/// [`run`] on a blocking thread, asserting a clean end.
pub async fn run_ok(args: &[&str], stdin: &[u8]) -> Run {
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_vec();
    let r = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = owned.iter().map(String::as_str).collect();
        run(&a, &stdin)
    })
    .await
    .expect("stream client thread");
    assert!(r.ok, "streamclient {args:?}: {}", r.stderr);
    r
}
