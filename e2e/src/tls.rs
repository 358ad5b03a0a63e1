//! Test certificates from Debian's openssl (deploy/deps.sh --test).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A test CA and a server certificate it signed for 127.0.0.1.
pub struct TestCerts {
    /// The CA certificate (PEM), to trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for IP 127.0.0.1 in `dir`, valid one day.
pub fn ca_and_server_cert(dir: &Path) -> TestCerts {
    let run = |args: &[&str]| {
        let st = Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-days", "1", "-subj", "/CN=berth test CA", "-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign", "-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n")
        .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    TestCerts { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") }
}

/// A client certificate (`client.pem`, `client.key` in `dir`) signed by the
/// CA [`ca_and_server_cert`] made there.
pub fn client_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let st = Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=berth node"]
        .into_iter()
        .chain(["-keyout", "client.key", "-out", "client.csr"])
        .collect::<Vec<_>>());
    std::fs::write(dir.join("client.cnf"), "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n").expect("client.cnf");
    run(&[
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile",
        "client.cnf", "-out", "client.pem",
    ]);
    (dir.join("client.pem"), dir.join("client.key"))
}
