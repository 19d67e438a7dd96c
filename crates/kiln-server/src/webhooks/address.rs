//! Which webhook targets Kiln may call: http(s) URLs whose host resolves only to public
//! addresses, unless the instance allows private ones (`--webhooks-allow-private`).
//! Checked when an endpoint is saved (`resolve`) and again for every connection the
//! sender opens (`CheckingResolver`, DNS can change); the connection goes to the
//! addresses that were checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// Resolves a target and checks its addresses; returns the address to connect to.
pub(crate) async fn resolve(target: &Target, allow_private: bool) -> Result<SocketAddr, String> {
    let addresses: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => lookup(&target.host, target.port).await?,
    };
    check(&target.host, &addresses, allow_private)?;
    Ok(addresses[0])
}

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    Ok(tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .collect())
}

/// Refuses an empty list, and any private address unless allowed.
pub(crate) fn check(
    host: &str,
    addresses: &[SocketAddr],
    allow_private: bool,
) -> Result<(), String> {
    if addresses.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if !allow_private
        && let Some(refused) = addresses.iter().find(|address| !is_public(address.ip()))
    {
        return Err(format!(
            "{host} resolves to {}, a private, loopback or link-local address; webhooks may only call public addresses (an instance admin can allow private ones with --webhooks-allow-private)",
            refused.ip()
        ));
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

pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7 and link-local fe80::/10.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

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
