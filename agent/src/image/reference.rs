//! Image references in the grammar of the distribution project's
//! `reference` package (what Docker, containerd and kubelet accept), parsed
//! by hand.
//!
//! oci-spec's `Reference::from_str` matches one large regex whose `\w` is
//! Unicode-aware; the compiled automaton (≈ 5 MiB) is kept in a static for
//! the life of the process, which was most of berthd's idle heap after its
//! first pull. The grammar is small enough to check directly, and `\w`
//! here is ASCII, as in Go's RE2 that defines it.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host [ ":" port ]
//! host       := label ( "." label )* | "[" ipv6 "]"
//! label      := [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" [0-9A-Fa-f]{32,}
//! algorithm  := [A-Za-z][A-Za-z0-9]* ( [-_+.] [A-Za-z][A-Za-z0-9]* )*
//! ```

use oci_client::Reference;

/// The longest repository name (after normalisation) a registry accepts.
const NAME_MAX: usize = 255;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

/// Parses `s` and normalises it as Docker does: a missing domain is
/// `docker.io`, a one-component Docker Hub name is in `library/`, and a
/// reference with neither tag nor digest is `:latest`.
pub fn parse(s: &str) -> Result<Reference, String> {
    if s.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(check_tag(&rest[i + 1..])?)),
        _ => (rest, None),
    };
    check_name(name)?;
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(format!("repository name must not be longer than {NAME_MAX} characters"));
    }
    let registry = registry.to_string();
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(registry, repository, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

fn check_digest(d: &str) -> Result<&str, String> {
    let bad = || format!("invalid digest {d:?}");
    let (algorithm, hex) = d.split_once(':').ok_or_else(bad)?;
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let mut b = part.bytes();
        b.next().is_some_and(|c| c.is_ascii_alphabetic()) && b.all(|c| c.is_ascii_alphanumeric())
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        other => return Err(format!("unsupported digest algorithm {other:?}")),
    };
    if hex.len() != want {
        return Err(format!("invalid length of {algorithm} digest {d:?}"));
    }
    Ok(d)
}

fn check_tag(t: &str) -> Result<&str, String> {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    let ok = b.first().is_some_and(|&c| word(c)) && b.len() <= 128 && b.iter().all(|&c| word(c) || c == b'.' || c == b'-');
    if ok {
        Ok(t)
    } else {
        Err(format!("invalid tag {t:?}"))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('/').collect();
    // The first part may be a domain instead of a path component; which one
    // it is decides split_domain, as in Docker.
    let (first, rest) = parts.split_first().ok_or("empty name")?;
    let first_ok = is_component(first) || (!rest.is_empty() && is_domain(first));
    if !first_ok || !rest.iter().all(|p| is_component(p)) {
        return Err("invalid reference format".into());
    }
    Ok(())
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.first().is_some_and(|&c| alnum(c)) || !b.last().is_some_and(|&c| alnum(c)) {
        return false;
    }
    // Between two alphanumeric runs: ".", "_", "__" or any number of "-".
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rfind(':') {
        // An IPv6 host's own colons are inside its brackets.
        Some(i) if !d[i..].contains(']') => (&d[..i], Some(&d[i + 1..])),
        _ => (d, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit())) {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        b.first().is_some_and(|c| c.is_ascii_alphanumeric())
            && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    })
}

/// Docker's `splitDockerDomain`: the first part is a registry when it looks
/// like a host (has a '.' or ':', or is `localhost`).
fn split_domain(name: &str) -> (&str, String) {
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    let domain = if domain == DOCKER_HUB_LEGACY { DOCKER_HUB } else { domain };
    if domain == DOCKER_HUB && !remainder.contains('/') {
        return (domain, format!("library/{remainder}"));
    }
    (domain, remainder.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &str) -> String {
        parse(s).map(|r| r.whole()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn normalises_as_docker_does() {
        let d = format!("sha256:{}", "ab".repeat(32));
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("test.com:tag", "docker.io/library/test.com:tag".into()),
            ("test.com:5000", "docker.io/library/test.com:5000".into()),
            ("test.com/repo:tag", "test.com/repo:tag".into()),
            ("test:5000/repo", "test:5000/repo:latest".into()),
            ("test:5000/repo:tag", "test:5000/repo:tag".into()),
            ("localhost/a", "localhost/a:latest".into()),
            ("index.docker.io/busybox", "docker.io/library/busybox:latest".into()),
            ("docker.io/team/app", "docker.io/team/app:latest".into()),
            ("a/b/c", "docker.io/a/b/c:latest".into()),
            ("127.0.0.1:5000/x/y:1.0", "127.0.0.1:5000/x/y:1.0".into()),
            ("[::1]:5000/x:1", "[::1]:5000/x:1".into()),
            ("my-registry.example/a__b/c.d/e---f_g:v1.2-rc_3", "my-registry.example/a__b/c.d/e---f_g:v1.2-rc_3".into()),
            (&format!("quay.io/x/y@{d}"), format!("quay.io/x/y@{d}")),
            (&format!("quay.io/x/y:t@{d}"), format!("quay.io/x/y:t@{d}")),
            ("Foo.example/lower", "Foo.example/lower:latest".into()),
        ] {
            assert_eq!(whole(input), want, "{input}");
        }
    }

    #[test]
    fn refuses_what_the_grammar_refuses() {
        let long = format!("a/{}", "b".repeat(255));
        let bad_digests = [
            "x@sha256:abc".to_string(),
            format!("x@sha256:{}", "g".repeat(64)),
            format!("x@sha256:{}", "a".repeat(63)),
            format!("x@md5:{}", "a".repeat(32)),
            format!("x@1sha:{}", "a".repeat(64)),
        ];
        // '|'-separated, the first one empty.
        let bad = "|a b|UPPER|a//b|/a|a/|-a|a-|a..b|a___b|a.-b|x:|x:-tag|x:tag!|:tag|a:5000x/b|-host.com/a|[::1/x|[zz]:1/x|x@|é|x:tägg";
        for input in bad.split('|').map(String::from).chain(bad_digests).chain([long, format!("x:{}", "t".repeat(129))]) {
            assert!(parse(&input).is_err(), "{input:?} parsed as {:?}", parse(&input).map(|r| r.whole()));
        }
        assert!(parse(&format!("x:{}", "t".repeat(128))).is_ok());
    }
}
