//! Registry hosts configuration as an operator writes it: a hosts.toml per
//! registry (containerd's certs.d layout) with path-prefixed and
//! override_path mirrors, a registry over TLS with its own CA, and
//! credentials from the config.

use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_e2e::{oci, registry, run_berthd, Berthd};

/// A plain-HTTP reverse proxy on 127.0.0.1 to `upstream` that rewrites
/// each request's path with `rewrite` (None: 404) and records the paths
/// it was asked for.
async fn rewriting_proxy(upstream: String, rewrite: fn(&str) -> Option<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                // A puller sends GET/HEAD requests without bodies: each head
                // ends at an empty line.
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 8192];
                loop {
                    let Ok(n) = cr.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).to_string();
                        let (line, rest) = head.split_once("\r\n").unwrap_or((&head, ""));
                        let mut parts = line.splitn(3, ' ');
                        let (method, path, version) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        seen.lock().unwrap().push(path.to_string());
                        let path = rewrite(path).unwrap_or_else(|| "/not-rewritable".into());
                        if sw.write_all(format!("{method} {path} {version}\r\n{rest}").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (address, seen)
}

/// `/v2/proxy-cache/<repo>/…` (override_path) and `/prefix/v2/<repo>/…`
/// (a path prefix) both to `/v2/<repo>/…`; `/v2/` and `/prefix/v2/` too.
fn strip_prefixes(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("/v2/proxy-cache/") {
        return Some(format!("/v2/{rest}"));
    }
    if let Some(rest) = path.strip_prefix("/prefix/v2/") {
        return Some(format!("/v2/{rest}"));
    }
    (path == "/v2/").then(|| path.to_string())
}

fn write_hosts(dir: &Path, registry: &str, text: &str) {
    std::fs::create_dir_all(dir.join(registry)).unwrap();
    std::fs::write(dir.join(registry).join("hosts.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_mirrors_with_override_path_and_a_path_prefix() {
    let registry = registry::Registry::start().await;
    registry.push("library/busybox", "latest", &oci::busybox_image(&oci::ImageSettings::default())).await;
    let (proxy, seen) = rewriting_proxy(registry.host.clone(), strip_prefixes).await;
    let hosts = tempfile::tempdir().unwrap();
    // Two registries nobody serves (closed ports on loopback): only their mirrors answer.
    let a = format!("127.0.0.1:{}", registry::free_port());
    let b = format!("127.0.0.1:{}", registry::free_port());
    write_hosts(hosts.path(), &a, &format!("server = \"http://{a}\"\n[host.\"http://{proxy}/v2/proxy-cache\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"));
    write_hosts(hosts.path(), &b, &format!("server = \"http://{b}\"\n[host.\"http://{proxy}/prefix\"]\n"));
    let berthd = Berthd::start_with_config(&format!("[registry]\nconfig_path = \"{}\"\n", hosts.path().display())).await;
    let mut cri = berthd.cri().await;

    cri.pull(&format!("{a}/library/busybox:latest")).await.expect("pull through the override_path mirror");
    assert!(seen.lock().unwrap().iter().any(|p| p == "/v2/proxy-cache/library/busybox/manifests/latest"), "{seen:?}");
    assert!(seen.lock().unwrap().iter().any(|p| p.starts_with("/v2/proxy-cache/library/busybox/blobs/sha256:")), "{seen:?}");
    cri.pull(&format!("{b}/library/busybox:latest")).await.expect("pull through the path-prefixed mirror");
    assert!(seen.lock().unwrap().iter().any(|p| p == "/prefix/v2/library/busybox/manifests/latest"), "{seen:?}");

    // A mirror that may not resolve tags serves pulls by digest only.
    write_hosts(
        hosts.path(),
        &a,
        &format!(
            "server = \"http://{a}\"\n[host.\"http://{proxy}/v2/proxy-cache\"]\n  capabilities = [\"pull\"]\n  override_path = true\n"
        ),
    );
    let e = cri.pull(&format!("{a}/library/busybox:latest")).await.expect_err("only the dead server may resolve the tag");
    assert!(e.message().contains(&a), "{e:?}");
    let digest = cri.image_status(&format!("{b}/library/busybox:latest")).await.unwrap().unwrap().repo_digests[0]
        .split('@')
        .nth(1)
        .unwrap()
        .to_string();
    cri.pull(&format!("{a}/library/busybox@{digest}")).await.expect("by digest through the pull-only mirror");

    // A hosts.toml berth cannot honour is a clear error naming the file.
    write_hosts(hosts.path(), &a, &format!("[host.\"https://{proxy}\"]\n  client = [\"a.pem\", \"b.pem\"]\n"));
    let e = cri.pull(&format!("{a}/library/busybox:latest")).await.unwrap_err();
    assert!(e.message().contains("hosts.toml") && e.message().contains("one client certificate"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_registry_with_its_own_ca_from_hosts_toml() {
    let certs = tempfile::tempdir().unwrap();
    let berth_e2e::tls::TestCerts { ca, cert, key } = berth_e2e::tls::ca_and_server_cert(certs.path());
    let plain = registry::Registry::start().await;
    plain.push("busybox", "latest", &oci::busybox_image(&oci::ImageSettings::default())).await;
    let tls = plain.tls_twin(&cert, &key).await;
    let image = tls.reference("busybox", "latest");
    let hosts = tempfile::tempdir().unwrap();
    let berthd = Berthd::start_with_config(&format!("[registry]\nconfig_path = \"{}\"\n", hosts.path().display())).await;
    let mut cri = berthd.cri().await;

    // HTTPS asked for, the CA unknown: refused.
    write_hosts(hosts.path(), &tls.host, &format!("server = \"https://{}\"\n", tls.host));
    let e = cri.pull(&image).await.expect_err("an unknown CA");
    assert!(e.message().to_lowercase().contains("certificate") || e.message().contains("UnknownIssuer"), "{e:?}");
    // The CA next to hosts.toml (a relative path), trusted for this registry only.
    std::fs::copy(&ca, hosts.path().join(&tls.host).join("ca.pem")).unwrap();
    write_hosts(hosts.path(), &tls.host, &format!("server = \"https://{}\"\nca = \"ca.pem\"\n", tls.host));
    cri.pull(&image).await.expect("pull over TLS with the registry's CA");
    assert!(tls.log().contains("/v2/busybox/manifests/latest"), "served by the TLS registry");
    cri.image.remove_image(berth_e2e::cri::RemoveImageRequest { image: Some(berth_e2e::image_spec(&image)) }).await.unwrap();
    // skip_verify: no CA, no verification.
    write_hosts(hosts.path(), &tls.host, &format!("server = \"https://{}\"\nskip_verify = true\n", tls.host));
    cri.pull(&image).await.expect("pull with skip_verify");
}

/// A berthd with the hosts directory `hosts` and node:n0de-pass for
/// `registry`, a client, and `registry`'s directory in `hosts` (made).
async fn berthd_for(hosts: &Path, registry: &str) -> (Berthd, berth_e2e::Cri, std::path::PathBuf) {
    let config = format!(
        "[registry]\nconfig_path = \"{}\"\n[registry.auths.\"{registry}\"]\nusername = \"node\"\npassword = \"n0de-pass\"\n",
        hosts.display()
    );
    let berthd = Berthd::start_with_config(&config).await;
    let cri = berthd.cri().await;
    let dir = hosts.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    (berthd, cri, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_wants_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let berth_e2e::tls::TestCerts { ca, cert, key } = berth_e2e::tls::ca_and_server_cert(certs.path());
    let (client_pem, client_key) = berth_e2e::tls::client_cert(certs.path());
    let plain = registry::Registry::start().await;
    plain.push("busybox", "latest", &oci::busybox_image(&oci::ImageSettings::default())).await;
    // TLS with client certificates required, and basic auth on top.
    let mtls = plain.mtls_twin(&cert, &key, &ca, "node", "n0de-pass").await;
    let image = mtls.reference("busybox", "latest");
    let hosts = tempfile::tempdir().unwrap();
    let (berthd, mut cri, dir) = berthd_for(hosts.path(), &mtls.host).await;
    std::fs::copy(&ca, dir.join("ca.pem")).unwrap();
    let server = format!("server = \"https://{}\"\nca = \"ca.pem\"\n", mtls.host);

    // Without one, the registry ends the handshake.
    write_hosts(hosts.path(), &mtls.host, &server);
    let e = cri.pull(&image).await.expect_err("no client certificate");
    assert!(e.message().to_lowercase().contains("certificate"), "{e:?}");
    assert!(!mtls.log().contains("/v2/busybox/manifests/latest"), "nothing was served");

    // A certificate and key pair next to hosts.toml: pulled, with the
    // configured credentials answering the registry's basic challenge.
    std::fs::copy(&client_pem, dir.join("client.pem")).unwrap();
    std::fs::copy(&client_key, dir.join("client.key")).unwrap();
    write_hosts(hosts.path(), &mtls.host, &format!("{server}client = [[\"client.pem\", \"client.key\"]]\n"));
    cri.pull(&image).await.expect("pull presenting the client certificate");
    assert!(mtls.log().contains("/v2/busybox/manifests/latest"), "served by the mTLS registry");
    let digest = cri.image_status(&image).await.unwrap().expect("the image is there").id;
    cri.image.remove_image(berth_e2e::cri::RemoveImageRequest { image: Some(berth_e2e::image_spec(&image)) }).await.unwrap();

    // One PEM holding both (containerd's other form).
    let both = [std::fs::read(&client_pem).unwrap(), std::fs::read(&client_key).unwrap()].concat();
    std::fs::write(dir.join("both.pem"), both).unwrap();
    write_hosts(hosts.path(), &mtls.host, &format!("{server}client = \"both.pem\"\n"));
    cri.pull(&image).await.expect("pull with a combined PEM");
    assert_eq!(cri.image_status(&image).await.unwrap().unwrap().id, digest);

    // A file that is not there is named.
    write_hosts(hosts.path(), &mtls.host, &format!("{server}client = \"missing.pem\"\n"));
    let e = cri.pull(&format!("{}/busybox:other", mtls.host)).await.unwrap_err();
    assert!(e.message().contains("missing.pem"), "{e:?}");
    drop(cri);
    drop(berthd);

    // The same host with the token flow (as Docker Hub and most registries
    // authenticate): the registry's 401 names a realm, berth asks it for a
    // pull token with the configured credentials, the registry verifies the
    // signed token.
    let bundle = berth_e2e::tls::token_signer(certs.path());
    let token = berth_e2e::tls::pull_token(certs.path(), "berth-issuer", "berth-registry", "busybox");
    let tokens = registry::TokenServer::start(token).await;
    let tok = plain.mtls_token_twin((&cert, &key), &ca, (&tokens.realm, "berth-registry", "berth-issuer"), &bundle).await;
    let image = tok.reference("busybox", "latest");
    let (_berthd, mut cri, dir) = berthd_for(hosts.path(), &tok.host).await;
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(hosts.path().join(&mtls.host).join(f), dir.join(f)).unwrap();
    }
    let text = format!("server = \"https://{}\"\nca = \"ca.pem\"\nclient = [[\"client.pem\", \"client.key\"]]\n", tok.host);
    write_hosts(hosts.path(), &tok.host, &text);
    cri.pull(&image).await.expect("pull through the token flow");
    let asked = tokens.requests.lock().unwrap().clone();
    assert!(!asked.is_empty(), "berth never asked the realm for a token");
    assert!(asked[0].contains("scope=repository%3Abusybox%3Apull") && asked[0].contains("service=berth-registry"), "{}", asked[0]);
    // The credentials go to the token endpoint (base64 of node:n0de-pass).
    assert!(asked[0].contains("Basic bm9kZTpuMGRlLXBhc3M="), "{}", asked[0]);
    assert!(tok.log().contains("/v2/busybox/manifests/latest"), "served once the token was shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_the_config_for_pulls_without_any_and_never_shown() {
    let registry = registry::Registry::start_with_auth("puller", "s3cret-pass").await;
    registry.push("busybox", "latest", &oci::busybox_image(&oci::ImageSettings::default())).await;
    let image = registry.reference("busybox", "latest");
    let config = format!("[registry.auths.\"{}\"]\nusername = \"puller\"\npassword = \"s3cret-pass\"\n", registry.host);

    let without = Berthd::start().await;
    let e = without.cri().await.pull(&image).await.expect_err("no credentials anywhere");
    assert!(e.message().to_lowercase().contains("not authorized"), "{e:?}");
    drop(without);

    let berthd = Berthd::start_with_config(&config).await;
    let mut cri = berthd.cri().await;
    cri.pull(&image).await.expect("the configured credentials");
    let s = cri.runtime.status(berth_e2e::cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    assert!(!s.info["config"].contains("s3cret-pass") && s.info["config"].contains("<redacted>"), "{}", s.info["config"]);
    assert!(!berthd.log().contains("s3cret-pass"));
    let config_path = berthd.paths.config.display().to_string();
    let (status, shown, err) = run_berthd(&["--config", &config_path, "config", "show"]);
    assert!(status.success(), "{err}");
    assert!(!shown.contains("s3cret-pass") && shown.contains("password = \"<redacted>\""), "{shown}");
}
