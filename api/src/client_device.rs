//! What a person is shown of the clients that signed in as them, and what a session is bound to:
//! the device summary (browser or tool family and operating system, read from the user agent),
//! the approximate network (the client's IPv4 /24 or IPv6 /48), and a digest of the whole user
//! agent. Nothing finer is kept beside a session: the full address and agent are in the log's
//! sealed metadata only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};

use crate::extract::ClientContext;

/// The device of a request, as sessions keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDevice {
    /// For example `Firefox on Linux`, `curl`, or `unknown device`.
    pub summary: String,
    /// For example `203.0.113.0/24` or `2001:db8:1::/48`; `None` when the address is unknown.
    pub network: Option<String>,
    /// SHA-256 of the user agent as received (shortened like the log's), `None` without one.
    pub agent_digest: Option<Vec<u8>>,
}

impl ClientDevice {
    /// The device of the request `ctx` describes.
    pub fn of(ctx: &ClientContext) -> Self {
        let agent = ctx.user_agent.as_deref().filter(|a| !a.trim().is_empty());
        Self {
            summary: summary(agent),
            network: ctx.ip.map(network),
            agent_digest: agent.map(|a| Sha256::digest(a.as_bytes()).to_vec()),
        }
    }

    /// The network as shown to people: the network, or `unknown network`.
    pub fn network_label(&self) -> &str {
        self.network.as_deref().unwrap_or("unknown network")
    }
}

/// The network a client address is shown as: its IPv4 /24 or its IPv6 /48 (an IPv4-mapped IPv6
/// address counts as the IPv4 address it is).
pub fn network(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{}/24", Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/48", Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Browser or tool families, most specific first: Edge and Opera say "Chrome" too, Chrome says
/// "Safari" too.
const FAMILIES: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("Vivaldi/", "Vivaldi"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("Wget/", "Wget"),
    ("python-requests/", "Python requests"),
    ("okhttp/", "OkHttp"),
    ("Go-http-client/", "Go HTTP client"),
    ("PostmanRuntime/", "Postman"),
    ("HTTPie/", "HTTPie"),
    ("node-fetch", "Node.js"),
    ("undici", "Node.js"),
];

/// Operating systems, most specific first: Android says "Linux" too, iOS says "Mac OS X".
const SYSTEMS: &[(&str, &str)] = &[
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
    ("FreeBSD", "FreeBSD"),
];

/// `"<family> on <system>"`, either alone when only one is known, `unknown device` when neither.
pub fn summary(user_agent: Option<&str>) -> String {
    let Some(agent) = user_agent else {
        return "unknown device".to_owned();
    };
    let find = |table: &[(&'static str, &'static str)]| {
        table
            .iter()
            .find(|(marker, _)| agent.contains(marker))
            .map(|(_, name)| *name)
    };
    match (find(FAMILIES), find(SYSTEMS)) {
        (Some(family), Some(system)) => format!("{family} on {system}"),
        (Some(name), None) | (None, Some(name)) => name.to_owned(),
        (None, None) => "unknown device".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_and_tools_are_named_by_family_and_system() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0 Mobile/15E148 Safari/604.1",
                "Chrome on iOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            ("curl/8.5.0", "curl"),
            ("something else entirely", "unknown device"),
        ];
        for (agent, expected) in cases {
            assert_eq!(summary(Some(agent)), expected, "{agent}");
        }
        assert_eq!(summary(None), "unknown device");
    }

    #[test]
    fn networks_are_the_24_or_the_48_of_the_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network(ip("203.0.113.77")), "203.0.113.0/24");
        assert_eq!(network(ip("::ffff:198.51.100.9")), "198.51.100.0/24");
        assert_eq!(network(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1::/48");
    }

    #[test]
    fn a_request_without_agent_or_address_is_an_unknown_device() {
        let device = ClientDevice::of(&ClientContext::default());
        assert_eq!(device.summary, "unknown device");
        assert_eq!(device.network_label(), "unknown network");
        assert_eq!(device.agent_digest, None);
    }
}
