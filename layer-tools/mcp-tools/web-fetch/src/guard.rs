//! The SSRF guard: which addresses a fetch may connect to.
//!
//! Every address a fetch would connect to passes [`Guard::check_addr`]: the literal address
//! of a URL before the request and after every redirect, and every address a host name
//! resolves to inside [`GuardedResolver`], the HTTP client's only resolver. Because the
//! client connects only to the addresses the resolver returned, the address checked is the
//! address connected to: DNS cannot answer differently between check and connect.
//!
//! IP spellings (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`) are normalised by
//! the WHATWG URL parser before anything here sees them, so the check works on addresses,
//! never on strings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Host names refused whatever they resolve to.
const METADATA_NAMES: [&str; 4] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "instance-data.ec2.internal",
];

/// One `--allow-host` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// A host name (lower case), allowed whatever it resolves to.
    Host(String),
    /// An address range (`10.0.0.0/8`, `192.168.1.20`, `fd00::/8`).
    Net(IpNet),
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty --allow-host entry".into());
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(AllowRule::Net(net));
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(AllowRule::Net(IpNet::from(ip)));
        }
        if s.contains('/') || s.contains(':') {
            return Err(format!(
                "`{s}` is neither a host name, an address nor a CIDR range"
            ));
        }
        Ok(AllowRule::Host(
            s.trim_end_matches('.').to_ascii_lowercase(),
        ))
    }
}

/// Why an address or host is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused to connect to {host} ({addr}): it is a {class} address; only public addresses may be fetched unless the operator allow-lists them (--allow-host)"
)]
pub struct Refusal {
    pub host: String,
    pub addr: String,
    pub class: &'static str,
}

/// The allow-list and the address rules.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<AllowRule>,
}

impl Guard {
    pub fn new(allow: Vec<AllowRule>) -> Self {
        Guard { allow }
    }

    /// Whether `host` (a name, lower case) is allow-listed by name.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.allow
            .iter()
            .any(|r| matches!(r, AllowRule::Host(h) if h.eq_ignore_ascii_case(host)))
    }

    /// Checks one address `host` resolved to (or `host` itself, for a literal).
    pub fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let Some(class) = special_class(ip) else {
            return Ok(());
        };
        if self.host_allowed(host)
            || self
                .allow
                .iter()
                .any(|r| matches!(r, AllowRule::Net(n) if n.contains(&canonical(ip))))
        {
            return Ok(());
        }
        Err(Refusal {
            host: host.to_owned(),
            addr: ip.to_string(),
            class,
        })
    }

    /// Checks a URL's host before anything is sent: a literal address is checked here (the
    /// client does not resolve it); a name is checked only against the metadata names here
    /// and by address in [`GuardedResolver`].
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_addr(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_addr(&format!("[{ip}]"), IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => self.check_name(name),
            None => Err(Refusal {
                host: String::new(),
                addr: String::new(),
                class: "missing",
            }),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), Refusal> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let special = if METADATA_NAMES.contains(&name.as_str()) {
            Some("cloud-metadata")
        } else if name == "localhost" || name.ends_with(".localhost") {
            Some("loopback")
        } else {
            None
        };
        match special {
            Some(class) if !self.host_allowed(&name) => Err(Refusal {
                host: name.clone(),
                addr: name,
                class,
            }),
            _ => Ok(()),
        }
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible addresses as the IPv4 they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The class of a non-public address, or `None` for a public one.
pub fn special_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    let class = match (a, b, c, d) {
        // Named before their enclosing ranges so the refusal says what they are.
        (169, 254, 169, 254) | (100, 100, 100, 200) | (168, 63, 129, 16) | (192, 0, 0, 192) => {
            "cloud-metadata"
        }
        (0, ..) => "unspecified (0.0.0.0/8)",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, ..) | (192, 168, ..) => "private",
        (169, 254, ..) => "link-local",
        (100, 64..=127, ..) => "CGNAT (100.64.0.0/10)",
        (192, 0, 0, _) => "IETF protocol assignment (192.0.0.0/24)",
        (192, 0, 2, _) | (198, 51, 100, _) | (203, 0, 113, _) => "documentation",
        (198, 18..=19, ..) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast",
        (255, 255, 255, 255) => "broadcast",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    };
    Some(class)
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some("cloud-metadata");
    }
    let class = match seg[0] {
        // ::a.b.c.d (deprecated IPv4-compatible) and the rest of ::/96.
        0 if seg[1..6] == [0; 5] => {
            let v4 = Ipv4Addr::from(((u32::from(seg[6])) << 16) | u32::from(seg[7]));
            return v4_class(v4).or(Some("IPv4-compatible (::/96)"));
        }
        // NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48) reach the IPv4 they embed.
        0x0064 if seg[1] == 0xff9b => {
            let v4 = Ipv4Addr::from(((u32::from(seg[6])) << 16) | u32::from(seg[7]));
            return v4_class(v4).or(if seg[2] == 1 {
                Some("NAT64 local-use (64:ff9b:1::/48)")
            } else {
                None
            });
        }
        // 6to4 (2002::/16) embeds an IPv4 address in bits 16..48.
        0x2002 => {
            let v4 = Ipv4Addr::from(((u32::from(seg[1])) << 16) | u32::from(seg[2]));
            return v4_class(v4);
        }
        0x0100 if seg[1..4] == [0; 3] => "discard (100::/64)",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        0x2001 if seg[1] < 0x0200 => "IETF protocol assignment (2001::/23)",
        s if s & 0xfe00 == 0xfc00 => "private (unique local, fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local",
        s if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        s if s & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    };
    Some(class)
}

/// The HTTP client's resolver: resolves with the system resolver, then refuses the whole
/// answer if any address is not allowed (a name that resolves to one public and one private
/// address must not get lucky), and hands the client exactly the addresses it checked.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            guard.check_name(&host)?;
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            for a in &addrs {
                guard.check_addr(&host, a.ip())?;
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_rules_parse() {
        assert_eq!(
            "Example.LAN".parse::<AllowRule>(),
            Ok(AllowRule::Host("example.lan".into()))
        );
        assert!(matches!(
            "10.0.0.0/8".parse::<AllowRule>(),
            Ok(AllowRule::Net(_))
        ));
        assert!(matches!(
            "[::1]".parse::<AllowRule>(),
            Ok(AllowRule::Net(_))
        ));
        assert!("10.0.0.0/33".parse::<AllowRule>().is_err());
        assert!("".parse::<AllowRule>().is_err());
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(special_class(ip), None, "{ip}");
        }
    }
}
