//! The distribution API (manifests and blobs, pull only) over `reqwest`
//! directly, for a host that wants a client certificate: `oci-client` 0.18
//! builds its own HTTP client and offers no way to give it an identity.
//! Hosts without one keep going through `oci-client`.
//!
//! Authentication as the distribution spec's token flow: a request without
//! credentials, and on 401 the challenge it answers — `Basic` gets the
//! pull's user and password, `Bearer` a token from the challenge's realm
//! (asked with those credentials, if any, for `repository:<repo>:pull`).

use futures::StreamExt as _;
use oci_client::client::SizedStream;
use oci_client::secrets::RegistryAuth;

use super::distribution::RegistryError;
use super::hosts::Endpoint;

/// One host with a client certificate serving one repository.
pub struct HttpRemote {
    client: reqwest::Client,
    /// `https://host[:port][/prefix]`: `/v2/...` follows.
    base: String,
    repository: String,
    creds: RegistryAuth,
    /// The `Authorization` value the registry accepted (or asked for).
    authorization: tokio::sync::Mutex<Option<String>>,
    endpoint: String,
}

impl HttpRemote {
    /// A client for `endpoint` with its CAs, verification setting and client
    /// certificate.
    pub fn new(endpoint: &Endpoint, repository: String, creds: RegistryAuth) -> Result<HttpRemote, RegistryError> {
        let fail = |reason: String| RegistryError::Request { endpoint: endpoint.name.clone(), reason };
        let read = |p: &std::path::Path, what: &str| std::fs::read(p).map_err(|e| fail(format!("{what} {}: {e}", p.display())));
        let mut builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(endpoint.skip_verify);
        for path in &endpoint.ca {
            let cert = reqwest::Certificate::from_pem(&read(path, "ca")?).map_err(|e| fail(format!("ca {}: {e}", path.display())))?;
            builder = builder.tls_certs_merge([cert]);
        }
        if let Some((cert, key)) = &endpoint.client {
            let mut pem = read(cert, "client certificate")?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(read(key, "client key")?);
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| fail(format!("client certificate {}: {}", cert.display(), super::distribution::flatten_error(&e))))?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| fail(format!("cannot make an HTTP client: {e}")))?;
        Ok(HttpRemote {
            client,
            base: format!("https://{}", endpoint.name),
            repository,
            creds,
            authorization: tokio::sync::Mutex::new(None),
            endpoint: endpoint.name.clone(),
        })
    }

    fn fail(&self, reason: String) -> RegistryError {
        RegistryError::Request { endpoint: self.endpoint.clone(), reason }
    }

    /// GET `/v2/<repo>/<what>`, authenticating as the registry asks.
    async fn get(&self, what: &str, accept: &str) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}/v2/{}/{what}", self.base, self.repository);
        let send = |authorization: Option<String>| {
            let mut req = self.client.get(&url);
            if !accept.is_empty() {
                req = req.header(reqwest::header::ACCEPT, accept);
            }
            if let Some(a) = authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            req.send()
        };
        let net = |e: reqwest::Error| self.fail(super::distribution::flatten_error(&e));
        let known = self.authorization.lock().await.clone();
        let mut resp = send(known.clone()).await.map_err(net)?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge =
                resp.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let authorization = self.answer(&challenge).await?;
            if authorization.is_some() && authorization != known {
                resp = send(authorization.clone()).await.map_err(net)?;
                if resp.status().is_success() {
                    *self.authorization.lock().await = authorization;
                }
            }
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect());
        let what = if status == reqwest::StatusCode::UNAUTHORIZED { "not authorized" } else { "refused" };
        Err(self.fail(format!("GET {url}: {what}: {status} {message}")))
    }

    /// The `Authorization` value answering a 401's challenge, if any can.
    async fn answer(&self, challenge: &str) -> Result<Option<String>, RegistryError> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = match &self.creds {
            RegistryAuth::Basic(u, p) => Some((u.clone(), p.clone())),
            _ => None,
        };
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Ok(basic.map(|(u, p)| basic_value(&u, &p))),
            "bearer" => {
                if let RegistryAuth::Bearer(token) = &self.creds {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let Some(realm) = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()) else {
                    return Err(self.fail(format!("a Bearer challenge without a realm: {challenge:?}")));
                };
                let scope = params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut query = vec![("scope", scope)];
                if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                    query.push(("service", service.clone()));
                }
                let mut req = self.client.get(&realm).query(&query);
                if let Some((u, p)) = &basic {
                    req = req.basic_auth(u, Some(p));
                }
                let net = |e: reqwest::Error| self.fail(format!("token from {realm}: {}", super::distribution::flatten_error(&e)));
                let resp = req.send().await.map_err(net)?;
                if !resp.status().is_success() {
                    return Err(self.fail(format!("token from {realm}: not authorized: {}", resp.status())));
                }
                let body: serde_json::Value = resp.json().await.map_err(net)?;
                let token = body["token"].as_str().or(body["access_token"].as_str());
                token
                    .map(|t| Ok(Some(format!("Bearer {t}"))))
                    .unwrap_or_else(|| Err(self.fail(format!("token from {realm}: no token in the answer"))))
            }
            _ => Ok(None),
        }
    }

    /// A manifest by tag or digest: (bytes, media type).
    pub async fn manifest(&self, target: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let resp = self.get(&format!("manifests/{target}"), &super::distribution::ACCEPTED_MANIFESTS.join(", ")).await?;
        let header = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = resp.bytes().await.map_err(|e| self.fail(super::distribution::flatten_error(&e)))?.to_vec();
        let media_type = super::distribution::media_type(&bytes, header);
        Ok((bytes, media_type))
    }

    /// A blob's bytes as they arrive (the caller checks the digest).
    pub async fn blob(&self, digest: &str) -> Result<SizedStream, RegistryError> {
        let resp = self.get(&format!("blobs/{digest}"), "").await?;
        let content_length = resp.content_length();
        let stream = resp.bytes_stream().map(|r| r.map_err(std::io::Error::other)).boxed();
        Ok(SizedStream { content_length, digest_header_value: None, stream })
    }
}

fn basic_value(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// `Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"`
/// into its scheme and parameters (quoted values may hold commas).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_string();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string();
        }
        params.push((key.to_ascii_lowercase(), value));
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) =
            parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#);
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".to_string(), "https://auth.example/token".to_string()),
                ("service".to_string(), "registry.example".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="berth-test""#);
        assert_eq!((s.as_str(), p), ("Basic", vec![("realm".to_string(), "berth-test".to_string())]));
        let (s, p) = parse_challenge("Bearer realm=https://x/t, service=s");
        assert_eq!(s, "Bearer");
        assert_eq!(p[0], ("realm".to_string(), "https://x/t".to_string()));
        assert_eq!(p[1], ("service".to_string(), "s".to_string()));
        assert_eq!(parse_challenge("").1, vec![]);
        assert_eq!(basic_value("user", "pass"), "Basic dXNlcjpwYXNz");
    }
}
