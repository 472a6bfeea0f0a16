//! What outgoing `http` steps may reach. A URL can come from event data (a callback URL in
//! an unauthenticated webhook), so loopback, private, link-local (cloud metadata) and other
//! special addresses are refused unless the gateway file allows a host or range. Names are
//! checked after resolution, and the client connects to the address that was checked (the
//! resolver below is the client's only resolver: there is no second lookup). Redirects are
//! not followed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::lang::model::HttpPolicy;

/// Why an address may not be reached, if it may not.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special_v4(v4);
            }
            let seg = v6.segments();
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return special_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if seg[..6] == [0; 6] {
                Some("IPv4-compatible")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if ip.is_documentation() {
        Some("documentation")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("protocol assignments")
    } else {
        None
    }
}

/// The reason a request was refused; recognised in the client's error chain so that it is
/// not retried.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Finds a refusal in an error's chain of sources.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[derive(Clone)]
pub struct Guard {
    policy: Arc<HttpPolicy>,
}

impl Guard {
    pub fn new(policy: HttpPolicy) -> Guard {
        Guard {
            policy: Arc::new(policy),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.policy.allow_hosts.contains(&host)
    }

    /// Whether an address may be reached; the reason when not.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.policy.allow_nets.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match special(ip) {
            Some(why) => Err(format!(
                "{ip} is a {why} address (allow it in the gateway file's [http] allow)"
            )),
            None => Ok(()),
        }
    }

    /// The check of a URL before it is requested: a literal address is checked here (the
    /// client does not resolve it); a name is checked when it is resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let Some(host) = url.host_str() else {
            return Err(Refused(format!("{url} has no host")));
        };
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        self.check_ip(ip)
            .map_err(|why| Refused(format!("refused: {why}")))
    }

    /// The HTTP client of `http` steps: this guard resolves its names, and it follows no
    /// redirect.
    pub fn client(&self, in_flight: usize) -> reqwest::Client {
        reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(in_flight)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(self.clone()))
            .build()
            .expect("the HTTP client builds with static settings")
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if guard.host_allowed(&host) {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
            let mut refused = Vec::new();
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match guard.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.push(why);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = refused
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "no address".into());
                return Err(
                    Box::new(Refused(format!("refused: {host} resolves to {why}")))
                        as Box<dyn std::error::Error + Send + Sync>,
                );
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> Guard {
        Guard::new(HttpPolicy {
            allow_nets: allow.iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn special_addresses_are_refused_in_both_families() {
        let g = guard(&[]);
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(g.check_ip(ip).is_err(), "{refused} should be refused");
        }
        for public in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(g.check_ip(ip).is_ok(), "{public} is public");
        }
    }

    #[test]
    fn an_allowed_range_opens_only_itself() {
        let g = guard(&["127.0.0.1/32", "10.0.0.0/8"]);
        assert!(g.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check_ip("10.9.9.9".parse().unwrap()).is_ok());
        assert!(g.check_ip("127.0.0.2".parse().unwrap()).is_err());
        assert!(g.check_ip("169.254.169.254".parse().unwrap()).is_err());
        let why = guard(&[])
            .check_ip("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(why.contains("link-local"), "{why}");
    }

    #[test]
    fn literal_addresses_in_urls_are_checked_before_the_request() {
        let g = guard(&[]);
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(g.check_url(&url("http://127.0.0.1:9/x")).is_err());
        assert!(g.check_url(&url("http://[::ffff:127.0.0.1]/x")).is_err());
        assert!(g.check_url(&url("http://[::1]:80/")).is_err());
        assert!(g.check_url(&url("http://crm.example/x")).is_ok());
    }
}
