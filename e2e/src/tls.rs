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
    openssl_io(dir, args, b"");
}

/// openssl with `input` on its stdin; its stdout.
fn openssl_io(dir: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, input).expect("openssl stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
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

/// A token issuer's RSA key and self-signed certificate in `dir`
/// (`token.pem`, `token.key`): a registry's `rootcertbundle` trusts it.
pub fn token_signer(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=berth token issuer",
            "-days",
            "1",
            "-keyout",
            "token.key",
            "-out",
            "token.pem",
        ],
    );
    dir.join("token.pem")
}

/// A registry bearer token (a JWT signed RS256 by [`token_signer`]'s key,
/// its certificate in `x5c`) from `issuer` for `audience`, granting pull of
/// `repository` for an hour.
pub fn pull_token(dir: &Path, issuer: &str, audience: &str, repository: &str) -> String {
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let der = openssl_io(dir, &["x509", "-in", "token.pem", "-outform", "DER"], b"");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [base64::engine::general_purpose::STANDARD.encode(der)]});
    let claims = serde_json::json!({
        "iss": issuer, "sub": "node", "aud": audience, "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": format!("berth-{now}"),
        "access": [{"type": "repository", "name": repository, "actions": ["pull"]}],
    });
    let signing_input = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
    let signature = openssl_io(dir, &["dgst", "-sha256", "-sign", "token.key"], signing_input.as_bytes());
    format!("{signing_input}.{}", url.encode(signature))
}
