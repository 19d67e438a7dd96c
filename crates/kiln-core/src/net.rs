//! Which network addresses Kiln may connect to on a user's behalf (webhook receivers,
//! repositories), and what a repository location is (`RepoLocation::parse`).
//!
//! An address is *public* when it is globally reachable unicast: every range of the IANA
//! IPv4 and IPv6 special-purpose address registries that is not globally reachable is
//! refused, and so is an IPv6 address that carries an IPv4 address (IPv4-mapped and
//! -compatible, SIIT, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) unless the IPv4 address it
//! carries is public. Teredo (`2001::/32`) sits inside `2001::/23` and is refused whole.
//! The host's own addresses are an I/O question and are checked by the server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// IPv4 ranges that are not globally reachable unicast (IANA IPv4 Special-Purpose
/// Address Registry, plus multicast and the reserved 240/4).
const IPV4_REFUSED: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private-use"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private-use"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private-use"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// IPv6 ranges that are not globally reachable unicast and carry no IPv4 address
/// (IANA IPv6 Special-Purpose Address Registry, plus site-local and multicast).
const IPV6_REFUSED: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (Teredo and others)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing (SRv6) SIDs",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn v4_in(ip: Ipv4Addr, network: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network) & mask
}

fn v6_in(ip: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(network) & mask
}

/// The IPv4 address an IPv6 address carries, for every form that routes to it: mapped
/// `::ffff:a.b.c.d`, compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d` and 6to4 `2002:AABB:CCDD::`.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let forms: [(Ipv6Addr, u8); 4] = [
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96),
        (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96),
        (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    ];
    // `::` and `::1` are themselves, not IPv4-compatible 0.0.0.0 and 0.0.0.1.
    if bits <= 1 {
        return None;
    }
    if forms
        .iter()
        .any(|(network, prefix)| v6_in(ip, *network, *prefix))
    {
        return Some(low);
    }
    if v6_in(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

/// Why an address is not public, or `None` when it is globally reachable unicast.
pub fn non_public_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => IPV4_REFUSED
            .iter()
            .find(|(network, prefix, _)| v4_in(v4, *network, *prefix))
            .map(|(network, prefix, name)| format!("{name} ({network}/{prefix})"))
            .or_else(|| (v4 == Ipv4Addr::BROADCAST).then(|| "broadcast".to_owned())),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return non_public_reason(IpAddr::V4(v4))
                    .map(|reason| format!("{reason}, carried in IPv6 {v6}"));
            }
            IPV6_REFUSED
                .iter()
                .find(|(network, prefix, _)| v6_in(v6, *network, *prefix))
                .map(|(network, prefix, name)| format!("{name} ({network}/{prefix})"))
        }
    }
}

/// Whether Kiln may connect to `ip` when private targets are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

/// An address range (`10.0.0.0/8`, `fd00::/8`, or one address), for `--trusted-proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not an address range like 10.0.0.0/8 or fd00::/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0-{max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => v4_in(ip, network, self.prefix),
            (IpAddr::V6(network), IpAddr::V6(ip)) => v6_in(ip, network, self.prefix),
            _ => false,
        }
    }
}

/// The client of a request that came through `peer`: when `peer` is a trusted proxy,
/// the nearest address in the forwarding chain (`X-Forwarded-For` values or `Forwarded`
/// `for=` values, oldest first) that is not itself a trusted proxy; otherwise `peer`.
pub fn client_address(peer: IpAddr, chain: &[IpAddr], trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    chain
        .iter()
        .rev()
        .copied()
        .find(|ip| !is_trusted(*ip))
        .or_else(|| chain.first().copied())
        .unwrap_or(peer)
}

/// The addresses of `X-Forwarded-For` (`a, b`) or `Forwarded` (`for=a, for="[b]:1"`)
/// values, oldest first; entries that are not addresses (`unknown`, obfuscated names)
/// are skipped.
pub fn forwarded_chain(x_forwarded_for: &[&str], forwarded: &[&str]) -> Vec<IpAddr> {
    let mut chain = Vec::new();
    for value in forwarded {
        for element in value.split(',') {
            for pair in element.split(';') {
                let Some((name, node)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("for")
                    && let Some(ip) = parse_node(node.trim().trim_matches('"'))
                {
                    chain.push(ip);
                }
            }
        }
    }
    if chain.is_empty() {
        for value in x_forwarded_for {
            chain.extend(value.split(',').filter_map(|node| parse_node(node.trim())));
        }
    }
    chain
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    node.rsplit_once(':')?
        .0
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// git settings (`-c` values, in order) that make git take a repository's credentials
/// from the environment variables `KILN_GIT_USERNAME` and `KILN_GIT_PASSWORD`: the
/// secret never appears on a command line (where `ps` shows it) nor in a URL.
pub const GIT_CREDENTIAL_SETTINGS: [&str; 2] = [
    // An empty value first clears any helper configured elsewhere.
    "credential.helper=",
    "credential.helper=!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$KILN_GIT_USERNAME\" \"$KILN_GIT_PASSWORD\"; }; f",
];

/// Splits the credentials out of an `http(s)://user:password@host/…` URL (percent-
/// decoded, as git would send them): the URL without them, and `(user, password)`. Other
/// URLs come back unchanged (an ssh user name is not a secret).
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return (url.to_owned(), None);
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, password),
        None => (userinfo, ""),
    };
    (
        format!("{scheme}://{host}{path}"),
        Some((percent_decode(user), percent_decode(password))),
    )
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Where a project's repository is, as git would read the string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoLocation {
    /// A directory on the server's machine: a path, or a `file://` URL.
    Local(PathBuf),
    /// A repository reached over the network.
    Remote {
        /// `http`, `https`, `ssh` or `git` (scp-like `host:path` is `ssh`).
        scheme: &'static str,
        /// Without brackets for IPv6 literals.
        host: String,
        port: u16,
    },
}

impl RepoLocation {
    /// Reads a repository string the way git does; refuses transports other than
    /// http(s), ssh, git and local (remote helpers such as `ext::` run commands).
    pub fn parse(repo: &str) -> Result<RepoLocation, String> {
        // git's `<transport>::<address>` form (a remote helper): a scheme-like word
        // before `::` (an IPv6 literal such as `[::1]:repo` has a bracket there).
        let helper = repo.split_once("::").is_some_and(|(transport, _)| {
            !transport.is_empty()
                && transport
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        });
        if helper {
            return Err(
                "remote helpers (TRANSPORT::ADDRESS) are not supported; use an https://, ssh:// or git:// URL".into(),
            );
        }
        if let Some((scheme, rest)) = repo.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "http" => "http",
                "https" => "https",
                "ssh" | "git+ssh" | "ssh+git" => "ssh",
                "git" => "git",
                "file" => return Ok(RepoLocation::Local(PathBuf::from(file_url_path(rest)))),
                other => {
                    return Err(format!(
                        "the '{other}' transport is not supported; use https://, ssh://, git:// or a local path"
                    ));
                }
            };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = split_host_port(host_port)?;
            let default_port = match scheme {
                "http" => 80,
                "https" => 443,
                "ssh" => 22,
                _ => 9418,
            };
            return Ok(RepoLocation::Remote {
                scheme,
                host,
                port: port.unwrap_or(default_port),
            });
        }
        // scp-like with a bracketed host: `[host]:path`, `user@[host]:path`.
        let bracketed = repo
            .split_once('[')
            .filter(|(user, _)| user.is_empty() || (user.ends_with('@') && !user.contains('/')));
        if let Some((_, rest)) = bracketed
            && let Some((host, path)) = rest.split_once(']')
            && path.starts_with(':')
        {
            if host.is_empty() {
                return Err("give the host between '[' and ']'".into());
            }
            return Ok(RepoLocation::Remote {
                scheme: "ssh",
                host: host.to_owned(),
                port: 22,
            });
        }
        // git's rule for scp-like syntax: a colon before any slash (and not a Windows
        // drive letter, which Kiln's servers do not have).
        let first_colon = repo.find(':');
        let first_slash = repo.find('/');
        if let Some(colon) = first_colon
            && first_slash.is_none_or(|slash| colon < slash)
        {
            let target = &repo[..colon];
            let host = target.rsplit_once('@').map_or(target, |(_, h)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("give the host before ':' (git@host:path)".into());
            }
            return Ok(RepoLocation::Remote {
                scheme: "ssh",
                host: host.to_owned(),
                port: 22,
            });
        }
        Ok(RepoLocation::Local(PathBuf::from(repo)))
    }
}

/// `file://host/path` and `file:///path` to the path (git ignores a `localhost` host).
fn file_url_path(rest: &str) -> String {
    match rest.find('/') {
        Some(0) | None => rest.to_owned(),
        Some(slash) => rest[slash..].to_owned(),
    }
}

fn split_host_port(host_port: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 host needs its closing ']'")?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("the URL needs a host".into());
    }
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(
            port.parse::<u16>()
                .map_err(|_| format!("'{port}' is not a port number"))?,
        ),
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One address inside every refused range of the IANA special-purpose registries,
    /// and the forms that carry such an address in IPv6.
    #[test]
    fn every_special_purpose_range_is_refused() {
        for refused in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::8.8.8.8",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!is_public(ip), "{refused} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for allowed in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert!(
                is_public(ip),
                "{allowed} must pass: {:?}",
                non_public_reason(ip)
            );
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted = [
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let chain = forwarded_chain(&["203.0.113.9, 198.51.100.7, 10.0.0.5"], &[]);
        assert_eq!(
            client_address(ip("10.1.1.1"), &chain, &trusted),
            ip("198.51.100.7"),
            "the client the proxies saw, not what the client claimed"
        );
        assert_eq!(
            client_address(ip("192.0.2.1"), &chain, &trusted),
            ip("192.0.2.1"),
            "headers from an untrusted peer are ignored"
        );
        let chain = forwarded_chain(
            &[],
            &[r#"for="[2001:db8::1]:4711", for=unknown;proto=https"#],
        );
        assert_eq!(chain, vec![ip("2001:db8::1")]);
        assert_eq!(
            client_address(ip("::1"), &chain, &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(client_address(ip("::1"), &[], &trusted), ip("::1"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("proxy").is_err());
        assert!(
            Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains(ip("::ffff:10.2.3.4"))
        );
    }

    #[test]
    fn credentials_are_split_out_of_http_urls() {
        assert_eq!(
            split_credentials("https://x-access-token:t%40k@github.com/a/b.git"),
            (
                "https://github.com/a/b.git".to_owned(),
                Some(("x-access-token".to_owned(), "t@k".to_owned()))
            )
        );
        assert_eq!(
            split_credentials("https://TOKEN@git.example.com"),
            (
                "https://git.example.com".to_owned(),
                Some(("TOKEN".to_owned(), String::new()))
            )
        );
        for unchanged in [
            "https://github.com/a/b",
            "ssh://git@host/x",
            "git@host:x",
            "/srv/x",
        ] {
            assert_eq!(split_credentials(unchanged), (unchanged.to_owned(), None));
        }
    }

    #[test]
    fn the_reason_names_the_range_and_the_carrier() {
        let reason = non_public_reason("64:ff9b::a9fe:a9fe".parse().unwrap()).unwrap();
        assert!(reason.contains("link-local (169.254.0.0/16)"), "{reason}");
        assert!(reason.contains("64:ff9b::a9fe:a9fe"), "{reason}");
    }

    #[test]
    fn repository_strings_read_as_git_reads_them() {
        let remote = |scheme, host: &str, port| RepoLocation::Remote {
            scheme,
            host: host.into(),
            port,
        };
        for (repo, expected) in [
            (
                "https://github.com/a/b.git",
                remote("https", "github.com", 443),
            ),
            (
                "https://user:tok@host.example:8443/x",
                remote("https", "host.example", 8443),
            ),
            ("http://127.0.0.1:9/x", remote("http", "127.0.0.1", 9)),
            ("http://[::1]:8080/x", remote("http", "::1", 8080)),
            ("ssh://git@host/x", remote("ssh", "host", 22)),
            ("git+ssh://host:2222/x", remote("ssh", "host", 2222)),
            ("git://10.0.0.1/x", remote("git", "10.0.0.1", 9418)),
            ("git@github.com:a/b.git", remote("ssh", "github.com", 22)),
            ("host:repo", remote("ssh", "host", 22)),
            ("[::1]:repo", remote("ssh", "::1", 22)),
            (
                "/srv/git/x.git",
                RepoLocation::Local("/srv/git/x.git".into()),
            ),
            ("./x:y", RepoLocation::Local("./x:y".into())),
            ("file:///srv/x", RepoLocation::Local("/srv/x".into())),
            (
                "file://localhost/srv/x",
                RepoLocation::Local("/srv/x".into()),
            ),
        ] {
            assert_eq!(RepoLocation::parse(repo), Ok(expected), "{repo}");
        }
        for refused in [
            "ext::sh -c touch% /tmp/pwned",
            "fd::3",
            "ftp://host/x",
            "https:///x",
            "https://host:99999/x",
            ":path",
        ] {
            assert!(RepoLocation::parse(refused).is_err(), "{refused}");
        }
    }
}
