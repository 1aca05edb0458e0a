//! NATS server URLs: the syntax the nats crate accepts (checked when the
//! config is loaded, not at the first connect), and the form that may be
//! shown to people, without the credentials a URL can carry.
//!
//! A URL list is comma-separated; each is `[nats://|tls://][user[:pass]@]
//! host[:port]`, the scheme `nats://` when absent, the port 4222.

/// Checks a comma-separated list of NATS server URLs.
pub fn check_nats_url(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err("must not be empty".into());
    }
    for url in list.split(',') {
        let url = url.trim();
        check_one(url).map_err(|why| format!("{:?}: {why}", redact_url(url)))?;
    }
    Ok(())
}

fn check_one(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("an empty URL in the list".into());
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains {c:?}"));
    }
    let rest = match url.split_once("://") {
        Some(("nats" | "tls", rest)) => rest,
        Some((scheme, _)) => return Err(format!("unknown scheme {scheme:?} (nats or tls)")),
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        // [IPv6]:port
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err("an unclosed [ in the host".into()),
        },
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("port {p:?} is not 1 to 65535")),
        }
    }
    Ok(())
}

/// `url` (or a comma-separated list) with any `user:password@` or
/// `token@` replaced by `***@`, fit for logs, errors and `health`'s line.
pub fn redact_url(list: &str) -> String {
    list.split(',')
        .map(|url| {
            let (scheme, rest) = match url.split_once("://") {
                Some((s, r)) => (format!("{s}://"), r),
                None => (String::new(), url),
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_the_crate_takes_pass() {
        for ok in [
            "nats://127.0.0.1:4222",
            "tls://nats.example.com",
            "localhost:4222",
            "demo.nats.io",
            "nats://u:p@h:1,nats://h2:2",
            "nats://[::1]:4222",
        ] {
            assert_eq!(check_nats_url(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn broken_urls_are_refused_without_their_secrets() {
        for (bad, why) in [
            ("", "must not be empty"),
            ("http://h:1", "unknown scheme \"http\""),
            ("nats://:4222", "no host"),
            ("nats://h:99999", "port \"99999\""),
            ("nats://h:x", "port \"x\""),
            ("nats://h 1", "contains ' '"),
            ("nats://h:1,", "an empty URL"),
        ] {
            let e = check_nats_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = check_nats_url("nats://user:s3cret@h:x").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact_url("nats://u:pw@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("nats://tok@h"), "nats://***@h");
        assert_eq!(redact_url("tok@h:1,nats://h2"), "***@h:1,nats://h2");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("nats://h/x@y"), "nats://h/x@y");
    }
}
