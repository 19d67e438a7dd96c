//! Which addresses the server may connect to on a user's behalf: webhook receivers
//! (http(s) URLs) and repositories. A host must resolve only to public addresses
//! (`kiln_core::net`: every special-purpose range and IPv4 carried in IPv6 refused) that
//! are not the server's own, unless the instance allows private ones
//! (`--webhooks-allow-private`, `--repos-allow-private`). Webhook targets are checked when
//! an endpoint is saved (`resolve`) and again for every connection the sender opens
//! (`CheckingResolver`, DNS can change); the connection goes to the addresses that were
//! checked. Repositories are checked by `crate::scheduler::policy`.

use std::net::{IpAddr, SocketAddr};

use reqwest::Url;

/// A parsed target: its URL, host and port.
pub(crate) struct Target {
    pub url: Url,
    pub host: String,
    pub port: u16,
}

/// Parses an endpoint URL: absolute, http or https, with a host, no credentials.
pub(crate) fn parse(url: &str) -> Result<Target, String> {
    let parsed = Url::parse(url)
        .map_err(|_| "give an absolute URL like https://example.com/hook".to_owned())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http and https URLs are supported".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not supported".into());
    }
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or("the URL needs a host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL needs a port")?;
    Ok(Target {
        url: parsed,
        host,
        port,
    })
}

/// What the server connects to, for the words of a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Webhook,
    Repository,
}

impl Purpose {
    fn refusal(self) -> &'static str {
        match self {
            Purpose::Webhook => {
                "webhooks may only call public addresses (an instance admin can allow private ones with --webhooks-allow-private)"
            }
            Purpose::Repository => {
                "repositories must be at public addresses (an instance admin can allow private ones with --repos-allow-private)"
            }
        }
    }
}

/// Resolves a target and checks its addresses; returns the address to connect to.
pub(crate) async fn resolve(target: &Target, allow_private: bool) -> Result<SocketAddr, String> {
    resolve_host(&target.host, target.port, allow_private, Purpose::Webhook).await
}

/// Resolves `host` (a name or an IP literal) and checks every address it has; returns the
/// first, to connect to.
pub(crate) async fn resolve_host(
    host: &str,
    port: u16,
    allow_private: bool,
    purpose: Purpose,
) -> Result<SocketAddr, String> {
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => lookup(host, port).await?,
    };
    check_for(host, &addresses, allow_private, purpose)?;
    Ok(addresses[0])
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    Ok(tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .collect())
}

/// Refuses an empty list, and any private address unless allowed (a webhook's).
pub(crate) fn check(
    host: &str,
    addresses: &[SocketAddr],
    allow_private: bool,
) -> Result<(), String> {
    check_for(host, addresses, allow_private, Purpose::Webhook)
}

/// Refuses an empty list, and any address that is not public unless allowed.
pub(crate) fn check_for(
    host: &str,
    addresses: &[SocketAddr],
    allow_private: bool,
    purpose: Purpose,
) -> Result<(), String> {
    if addresses.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if allow_private {
        return Ok(());
    }
    for address in addresses {
        if let Some(reason) = refusal_reason(address.ip()) {
            return Err(format!(
                "{host} resolves to {}, a private or special-purpose address: {reason}; {}",
                address.ip(),
                purpose.refusal()
            ));
        }
    }
    Ok(())
}

/// The sender's DNS resolver: every connection the shared HTTP client opens to a host
/// name is to addresses checked here, so a name that starts resolving to a private
/// address is refused at its next connection (an IP literal never reaches a resolver:
/// the sender checks those itself). Pooled keep-alive connections were checked when
/// they were opened.
pub(crate) struct CheckingResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts in the URL's port.
            let addresses = lookup(&host, 0).await?;
            check(&host, &addresses, allow_private)?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// Why `ip` may not be called: a special-purpose range, or one of this host's own
/// addresses (its public address reaches its own loopback services too).
pub(crate) fn refusal_reason(ip: IpAddr) -> Option<String> {
    kiln_core::net::non_public_reason(ip).or_else(|| {
        is_own_address(ip).then(|| "an address of the Kiln server's own host".to_owned())
    })
}

#[cfg(test)]
fn is_public(ip: IpAddr) -> bool {
    refusal_reason(ip).is_none()
}

/// Whether `ip` is assigned to this host: binding a socket to an address succeeds only
/// for the host's own (a cheap system call, no packet sent).
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own addresses are found by binding; a public address that is not the
    /// host's is not.
    #[test]
    fn own_addresses_are_recognised() {
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        assert!(is_own_address("127.0.0.2".parse().unwrap()));
        assert!(!is_own_address("8.8.8.8".parse().unwrap()));
        assert!(!is_own_address("2606:4700::1111".parse().unwrap()));
    }

    #[test]
    fn private_addresses_are_not_public() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for allowed in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed}");
        }
    }

    #[test]
    fn only_http_urls_with_hosts() {
        assert!(parse("ftp://example.com/").is_err());
        assert!(parse("not a url").is_err());
        assert!(parse("https://user:pw@example.com/").is_err());
        let target = parse("http://[::1]:8080/x").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 8080));
    }

    /// The shared client's resolver refuses a name that resolves to loopback, for every
    /// connection, and lets it through when private targets are allowed.
    #[tokio::test]
    async fn the_resolver_checks_every_connection() {
        crate::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buffer = [0u8; 4096];
                    let _ = socket.read(&mut buffer).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        let url = format!("http://localhost:{port}/hook");
        for (allow_private, expect_ok) in [(false, false), (true, true)] {
            let client = reqwest::Client::builder()
                .dns_resolver(CheckingResolver { allow_private })
                .build()
                .unwrap();
            for _ in 0..2 {
                let result = client.post(&url).body("{}").send().await;
                match (expect_ok, result) {
                    (true, Ok(response)) => assert_eq!(response.status().as_u16(), 204),
                    (false, Err(error)) => {
                        let mut message = error.to_string();
                        let mut source = std::error::Error::source(&error);
                        while let Some(cause) = source {
                            message.push_str(&cause.to_string());
                            source = cause.source();
                        }
                        assert!(message.contains("loopback"), "{message}");
                        assert!(message.contains("--webhooks-allow-private"), "{message}");
                    }
                    (expect_ok, result) => {
                        panic!(
                            "allow_private {allow_private}: expected ok={expect_ok}, got {result:?}"
                        )
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let target = parse("http://127.0.0.1:9/hook").unwrap();
        assert!(resolve(&target, false).await.is_err());
        assert!(resolve(&target, true).await.is_ok());
    }
}
