//! Which IP addresses an image fetch may connect to.
//!
//! Only globally reachable unicast addresses are public. IPv6 forms that embed an IPv4
//! address (mapped, compatible, translated, NAT64, 6to4) are judged by the IPv4 address inside,
//! since the kernel or a translator may deliver them there; Teredo hides its target (XORed)
//! and is refused whole. Everything outside IPv6 global unicast (2000::/3) is refused too, so
//! a range this list forgets errs on the side of refusing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public; `describe` completes "host '...' ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPublic {
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Unspecified,
    Broadcast,
    Reserved,
    Documentation,
    Benchmarking,
    IetfProtocol,
    UniqueLocal,
    SiteLocal,
    Teredo,
}

impl NonPublic {
    fn noun(self) -> &'static str {
        match self {
            NonPublic::Loopback => "a loopback address",
            NonPublic::Private => "a private address",
            NonPublic::LinkLocal => "a link-local address",
            NonPublic::SharedCgnat => "a shared (carrier-grade NAT) address",
            NonPublic::Multicast => "a multicast address",
            NonPublic::Unspecified => "an unspecified address",
            NonPublic::Broadcast => "the broadcast address",
            NonPublic::Reserved => "a reserved address",
            NonPublic::Documentation => "a documentation address",
            NonPublic::Benchmarking => "a benchmarking address",
            NonPublic::IetfProtocol => "an IETF protocol-assignment address",
            NonPublic::UniqueLocal => "a unique-local address",
            NonPublic::SiteLocal => "a site-local address",
            NonPublic::Teredo => "a Teredo tunnel address",
        }
    }

    /// "is a loopback address" for an IP written in the URL, "resolves to ..." for a name.
    pub fn describe(self, literal: bool) -> String {
        let verb = if literal { "is" } else { "resolves to" };
        format!("{verb} {}", self.noun())
    }
}

/// `Ok` for an address an image fetch may reach, else the reason it may not.
pub fn classify(ip: IpAddr) -> Result<(), NonPublic> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Result<(), NonPublic> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        (0, _, _) => NonPublic::Unspecified, // 0.0.0.0/8 "this network"; Linux connects it locally
        (10, _, _) => NonPublic::Private,
        (100, 64..=127, _) => NonPublic::SharedCgnat,
        (127, _, _) => NonPublic::Loopback,
        (169, 254, _) => NonPublic::LinkLocal, // includes cloud metadata (169.254.169.254)
        (172, 16..=31, _) => NonPublic::Private,
        (192, 0, 0) => NonPublic::IetfProtocol,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => NonPublic::Documentation,
        (192, 88, 99) => NonPublic::Reserved, // deprecated 6to4 relay anycast
        (192, 168, _) => NonPublic::Private,
        (198, 18..=19, _) => NonPublic::Benchmarking,
        (224..=239, _, _) => NonPublic::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => NonPublic::Broadcast,
        (240..=255, _, _) => NonPublic::Reserved,
        _ => return Ok(()),
    };
    Err(class)
}

fn classify_v6(ip: Ipv6Addr) -> Result<(), NonPublic> {
    let seg = ip.segments();
    let embedded_tail = || {
        Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        )
    };

    if ip.is_unspecified() {
        return Err(NonPublic::Unspecified);
    }
    if ip.is_loopback() {
        return Err(NonPublic::Loopback);
    }
    match seg {
        // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated): the socket reaches the IPv4.
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => {
            return classify_v4(embedded_tail())
        }
        // ::a.b.c.d (IPv4-compatible, deprecated): nothing public lives there, and a stack
        // that still honours it would reach the IPv4.
        [0, 0, 0, 0, 0, 0, _, _] => {
            return Err(classify_v4(embedded_tail())
                .err()
                .unwrap_or(NonPublic::Reserved))
        }
        // 64:ff9b::/96 well-known NAT64 prefix: the translator connects to the IPv4 inside.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return classify_v4(embedded_tail()),
        _ => {}
    }
    let first = seg[0];
    let class = if first & 0xffc0 == 0xfe80 {
        NonPublic::LinkLocal
    } else if first & 0xffc0 == 0xfec0 {
        NonPublic::SiteLocal
    } else if first & 0xfe00 == 0xfc00 {
        NonPublic::UniqueLocal
    } else if first & 0xff00 == 0xff00 {
        NonPublic::Multicast
    } else if first & 0xe000 != 0x2000 {
        // Outside 2000::/3 global unicast: ::/8 leftovers, 64:ff9b:1::/48 local NAT64,
        // 100::/64 discard, and everything not yet allocated.
        NonPublic::Reserved
    } else if first == 0x2001 && seg[1] == 0 {
        NonPublic::Teredo // 2001::/32
    } else if first == 0x2001 && seg[1] == 0x0db8 || first & 0xfff0 == 0x3ff0 {
        NonPublic::Documentation // 2001:db8::/32, 3fff::/20
    } else if first == 0x2001 && seg[1] & 0xfe00 == 0 {
        NonPublic::IetfProtocol // 2001::/23 (benchmarking 2001:2::/48, ORCHID, ...)
    } else if first == 0x2002 {
        // 6to4: the relay delivers to the IPv4 in bits 16..48.
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return classify_v4(v4);
    } else {
        return Ok(());
    };
    Err(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Result<(), NonPublic> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn non_public_addresses_are_classified() {
        use NonPublic::*;
        for (addr, want) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.0.0.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("169.254.169.254", LinkLocal),
            ("172.16.5.4", Private),
            ("172.31.255.255", Private),
            ("192.0.0.8", IetfProtocol),
            ("192.0.2.1", Documentation),
            ("192.88.99.1", Reserved),
            ("192.168.1.1", Private),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:0:7f00:1", Loopback),
            ("::127.0.0.1", Loopback),
            ("::8.8.8.8", Reserved),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b:1::1", Reserved),
            ("100::1", Reserved),
            ("2002:7f00:1::", Loopback),
            ("2002:c0a8:101::1", Private),
            ("2001::1", Teredo),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", IetfProtocol),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", SiteLocal),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("4000::1", Reserved),
        ] {
            assert_eq!(class(addr), Err(want), "{addr}");
        }
    }
}
