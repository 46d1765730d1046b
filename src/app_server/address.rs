//! Which addresses the app server's outbound client may connect to: those reachable from the whole
//! internet, and nothing inside the operator's network.
//!
//! An endpoint URL is a client's choice, so it is an attacker's. An address is global when no
//! entry of IANA's IPv4 or IPv6 Special-Purpose Address Registry that is not "globally reachable"
//! holds it, and it is not multicast (or, in IPv6, outside global unicast space). The tables below
//! are those registries as of 2025, one line per entry; where an entry is globally reachable only
//! as an anycast service of no use to a push (PCP, TURN, AS112), it is refused all the same.
//!
//! IPv6 has forms that carry an IPv4 address inside, and that the host's stack or a translator on
//! the path turns into a connection to that IPv4 address: IPv4-mapped and IPv4-compatible,
//! NAT64 (the well-known prefix), 6to4, and Teredo (its server, and its client obfuscated). Such
//! an address is judged by every IPv4 address it carries, so `::ffff:127.0.0.1`,
//! `64:ff9b::a9fe:a9fe` and `2002:0a00:0001::` lead nowhere inside. NAT64 under a local-use prefix
//! is the operator's own translator, and refused whole.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

#[allow(clippy::too_many_arguments)]
const fn v6(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// IPv4 space that is not globally reachable (IANA IPv4 Special-Purpose Address Registry), and
/// multicast.
const NOT_GLOBAL_V4: [Ipv4Net; 19] = [
    v4(0, 0, 0, 0, 8),          // "this network" (RFC 791)
    v4(10, 0, 0, 0, 8),         // private use (RFC 1918)
    v4(100, 64, 0, 0, 10),      // shared address space, carrier-grade NAT (RFC 6598)
    v4(127, 0, 0, 0, 8),        // loopback (RFC 1122)
    v4(169, 254, 0, 0, 16),     // link local, cloud metadata services (RFC 3927)
    v4(172, 16, 0, 0, 12),      // private use (RFC 1918)
    v4(192, 0, 0, 0, 24),       // IETF protocol assignments, DS-Lite, NAT64 discovery (RFC 6890)
    v4(192, 0, 2, 0, 24),       // documentation, TEST-NET-1 (RFC 5737)
    v4(192, 31, 196, 0, 24),    // AS112 (RFC 7535): global, but no push service
    v4(192, 52, 193, 0, 24),    // AMT (RFC 7450): global, but no push service
    v4(192, 88, 99, 0, 24),     // the deprecated 6to4 relay anycast (RFC 7526)
    v4(192, 168, 0, 0, 16),     // private use (RFC 1918)
    v4(192, 175, 48, 0, 24),    // direct delegation AS112 (RFC 7534): global, but no push service
    v4(198, 18, 0, 0, 15),      // benchmarking (RFC 2544)
    v4(198, 51, 100, 0, 24),    // documentation, TEST-NET-2 (RFC 5737)
    v4(203, 0, 113, 0, 24),     // documentation, TEST-NET-3 (RFC 5737)
    v4(224, 0, 0, 0, 4),        // multicast (RFC 5771)
    v4(240, 0, 0, 0, 4),        // reserved (RFC 1112)
    v4(255, 255, 255, 255, 32), // limited broadcast (RFC 919)
];

/// IPv6 space that is not globally reachable (IANA IPv6 Special-Purpose Address Registry), and
/// what lies outside global unicast. The forms that carry an IPv4 address are not here: they are
/// judged by it ([`embedded_v4`]).
const NOT_GLOBAL_V6: [Ipv6Net; 14] = [
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified (RFC 4291)
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback (RFC 4291)
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // NAT64, local use (RFC 8215)
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard only (RFC 6666)
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64),      // dummy prefix (RFC 9780)
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments (RFC 2928), but Teredo
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation (RFC 3849)
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48), // direct delegation AS112: no push service
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // segment routing SIDs (RFC 9602)
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local (RFC 4193)
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link local (RFC 4291)
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site local, deprecated (RFC 3879)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast (RFC 4291)
];

/// Where IPv4 addresses hide in IPv6.
const MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96); // RFC 4291 §2.5.5.2
const COMPATIBLE: Ipv6Net = v6([0, 0, 0, 0, 0, 0, 0, 0], 96); // RFC 4291 §2.5.5.1, deprecated
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96); // RFC 6052
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16); // RFC 3056
const TEREDO: Ipv6Net = v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32); // RFC 4380

/// Whether `ip` is reachable from the whole internet, and so fit for an endpoint on it.
pub fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: &Ipv4Addr) -> bool {
    !NOT_GLOBAL_V4.iter().any(|net| net.contains(ip))
}

fn is_global_v6(ip: &Ipv6Addr) -> bool {
    let carried = embedded_v4(ip);
    if !carried.is_empty() {
        return carried.iter().all(is_global_v4);
    }
    // Global unicast is 2000::/3; everything else is reserved, local or multicast.
    let global_unicast = ip.segments()[0] & 0xe000 == 0x2000;
    global_unicast && !NOT_GLOBAL_V6.iter().any(|net| net.contains(ip))
}

/// The IPv4 addresses an IPv6 address carries, for the forms that lead to them; empty for any
/// other address. `::` and `::1` are IPv6's own, not IPv4-compatible.
fn embedded_v4(ip: &Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = ip.to_bits();
    let low32 = Ipv4Addr::from_bits(bits as u32);
    if MAPPED.contains(ip) || NAT64.contains(ip) {
        vec![low32]
    } else if COMPATIBLE.contains(ip) {
        match bits {
            0 | 1 => vec![],
            _ => vec![low32],
        }
    } else if SIX_TO_FOUR.contains(ip) {
        vec![Ipv4Addr::from_bits((bits >> 80) as u32)]
    } else if TEREDO.contains(ip) {
        // 2001:0:SERVER:flags:port:CLIENT, the client's bits inverted (RFC 4380 §4).
        let server = Ipv4Addr::from_bits((bits >> 64) as u32);
        let client = Ipv4Addr::from_bits(!(bits as u32));
        vec![server, client]
    } else {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(text: &str) -> bool {
        is_global(&text.parse().expect(text))
    }

    /// One address at the start, one inside and one at the end of every entry of both registries
    /// that is not globally reachable.
    #[test]
    fn every_special_purpose_range_is_refused_from_edge_to_edge() {
        for (first, inside, last) in [
            ("0.0.0.0", "0.1.2.3", "0.255.255.255"),
            ("10.0.0.0", "10.20.30.40", "10.255.255.255"),
            ("100.64.0.0", "100.100.100.100", "100.127.255.255"),
            ("127.0.0.0", "127.0.0.1", "127.255.255.255"),
            ("169.254.0.0", "169.254.169.254", "169.254.255.255"),
            ("172.16.0.0", "172.20.0.1", "172.31.255.255"),
            ("192.0.0.0", "192.0.0.9", "192.0.0.255"),
            ("192.0.2.0", "192.0.2.1", "192.0.2.255"),
            ("192.31.196.0", "192.31.196.1", "192.31.196.255"),
            ("192.52.193.0", "192.52.193.1", "192.52.193.255"),
            ("192.88.99.0", "192.88.99.1", "192.88.99.255"),
            ("192.168.0.0", "192.168.1.1", "192.168.255.255"),
            ("192.175.48.0", "192.175.48.1", "192.175.48.255"),
            ("198.18.0.0", "198.19.0.1", "198.19.255.255"),
            ("198.51.100.0", "198.51.100.1", "198.51.100.255"),
            ("203.0.113.0", "203.0.113.1", "203.0.113.255"),
            ("224.0.0.0", "239.1.2.3", "239.255.255.255"),
            ("240.0.0.0", "250.1.2.3", "255.255.255.254"),
            ("255.255.255.255", "255.255.255.255", "255.255.255.255"),
            ("::", "::", "::"),
            ("::1", "::1", "::1"),
            (
                "64:ff9b:1::",
                "64:ff9b:1::808:808",
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            ),
            ("100::", "100::1", "100::ffff:ffff:ffff:ffff"),
            (
                "100:0:0:1::",
                "100:0:0:1::1",
                "100:0:0:1:ffff:ffff:ffff:ffff",
            ),
            ("2001:2::", "2001:2::1", "2001:2:0:ffff:ffff:ffff:ffff:ffff"),
            (
                "2001:10::",
                "2001:10::1",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "2001:db8::",
                "2001:db8::1",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "2620:4f:8000::",
                "2620:4f:8000::1",
                "2620:4f:8000:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "3fff::",
                "3fff:1::1",
                "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "5f00::",
                "5f00::1",
                "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "fc00::",
                "fd12:3456::1",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "fe80::",
                "fe80::1",
                "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "fec0::",
                "fec0::1",
                "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "ff00::",
                "ff02::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            (
                "4000::",
                "8000::1",
                "dfff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
        ] {
            for address in [first, inside, last] {
                assert!(!global(address), "{address} is not globally reachable");
            }
        }
    }

    #[test]
    fn an_ipv4_address_inside_ipv6_is_judged_by_itself_in_every_form() {
        // Each form, carrying 127.0.0.1, 10.0.0.1, 169.254.169.254 and then a public address.
        for (form, carrying) in [
            ("::ffff:{}", "mapped"),
            ("::{}", "compatible"),
            ("64:ff9b::{}", "NAT64"),
        ] {
            for inside in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "0.0.0.0"] {
                let address = form.replace("{}", inside);
                assert!(!global(&address), "{carrying}: {address}");
            }
            let address = form.replace("{}", "93.184.216.34");
            assert!(global(&address), "{carrying}: {address}");
        }
        // 6to4 puts the address in the second and third groups.
        for address in ["2002:7f00:1::", "2002:a00:1::1", "2002:a9fe:a9fe:1::1"] {
            assert!(!global(address), "6to4: {address}");
        }
        assert!(global("2002:5db8:d822::1"), "6to4 of 93.184.216.34");
        // Teredo: the server in the third and fourth groups, the client inverted in the last two.
        let client_loopback = "2001:0:5db8:d822:0:0:80ff:fffe"; // !7f00:0001
        let server_private = "2001:0:a00:1:0:0:a247:27dd"; // server 10.0.0.1
        let both_public = "2001:0:5db8:d822:0:0:a247:27dd"; // client 93.184.216.34
        assert!(!global(client_loopback), "Teredo client 127.0.0.1");
        assert!(!global(server_private), "Teredo server 10.0.0.1");
        assert!(global(both_public));
    }

    #[test]
    fn ordinary_addresses_on_the_internet_are_global() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2a00:1450:4001:82b::200e",
            "2606:4700:4700::1111",
            "2001:200::1",
            "3fff:1000::1",
        ] {
            assert!(global(address), "{address}");
        }
    }
}
