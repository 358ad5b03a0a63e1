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

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl").args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// `<name>.key` and `<name>.pem` in `dir`: a key and a certificate for
/// `subject` with the X.509 extensions `ext`, signed by `ca.pem`/`ca.key`.
fn signed(dir: &Path, name: &str, subject: &str, ext: &str) -> (PathBuf, PathBuf) {
    let (key, csr, cnf, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.cnf"), format!("{name}.pem"));
    let mut req = vec!["req"];
    req.extend(EC);
    req.extend(["-subj", subject, "-keyout", &key, "-out", &csr]);
    openssl(dir, &req);
    std::fs::write(dir.join(&cnf), ext).expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &cnf,
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// Makes a CA and a server certificate for IP 127.0.0.1 in `dir`, valid one day.
pub fn ca_and_server_cert(dir: &Path) -> TestCerts {
    let mut ca = vec!["req", "-x509"];
    ca.extend(EC);
    ca.extend(["-days", "1", "-subj", "/CN=berth test CA", "-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign", "-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let ext = "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n";
    let (cert, key) = signed(dir, "server", "/CN=127.0.0.1", ext);
    TestCerts { ca: dir.join("ca.pem"), cert, key }
}

/// A client certificate (`client.pem`, `client.key` in `dir`) signed by the
/// CA [`ca_and_server_cert`] made there.
pub fn client_cert(dir: &Path) -> (PathBuf, PathBuf) {
    signed(dir, "client", "/CN=berth node", "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
}
