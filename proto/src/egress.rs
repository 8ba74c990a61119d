//! A session's egress policy: what it may reach beyond Warren itself.
//!
//! On the wire (`POST /v1/sessions` `"egress"`, the session's answer, the
//! desired-session spec agents read) it is `"none"` (the default: nothing
//! leaves the session except through Warren), `"internet"` (public
//! addresses, where the operator allows it) or a list of IPv4 CIDRs
//! (`["10.0.0.0/8"]`). Control checks a policy against the operator's
//! settings ([`Egress::checked`]); the agent enforces it on the worker,
//! with the ranges in [`NEVER`] and the worker's own networks refused
//! whatever the policy lists.
use std::fmt;
use std::net::Ipv4Addr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// The most CIDRs one session may list.
pub const MAX_CIDRS: usize = 32;

/// The operator's setting that lets sessions reach public addresses.
pub const INTERNET_SETTING: &str = "sessions.allow_internet_egress";

/// A session's egress policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Egress {
    /// Nothing leaves the session except through Warren.
    #[default]
    None,
    /// Public addresses: everything but [`PRIVATE`] and [`NEVER`].
    Internet,
    /// These CIDRs (as given; [`Egress::checked`] parses them).
    Cidrs(Vec<String>),
}

/// An IPv4 network: an address with its host bits clear, and a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Private ranges (RFC 1918, and RFC 6598's shared space): what a list may
/// name without [`INTERNET_SETTING`], and what `"internet"` leaves out.
pub const PRIVATE: [Ipv4Cidr; 4] = [
    Ipv4Cidr::of([10, 0, 0, 0], 8),
    Ipv4Cidr::of([172, 16, 0, 0], 12),
    Ipv4Cidr::of([192, 168, 0, 0], 16),
    Ipv4Cidr::of([100, 64, 0, 0], 10),
];

/// Ranges no session reaches, whatever its policy lists: the agent refuses
/// them first. Each with why.
pub const NEVER: [(Ipv4Cidr, &str); 7] = [
    (Ipv4Cidr::of([0, 0, 0, 0], 8), "\"this network\""),
    (Ipv4Cidr::of([127, 0, 0, 0], 8), "loopback"),
    (
        Ipv4Cidr::of([169, 254, 0, 0], 16),
        "link-local, where clouds serve instance metadata",
    ),
    (
        Ipv4Cidr::of([100, 100, 100, 200], 32),
        "a cloud's instance metadata",
    ),
    (
        Ipv4Cidr::of([168, 63, 129, 16], 32),
        "a cloud's host services",
    ),
    (Ipv4Cidr::of([224, 0, 0, 0], 4), "multicast"),
    (
        Ipv4Cidr::of([240, 0, 0, 0], 4),
        "reserved and broadcast addresses",
    ),
];

impl Ipv4Cidr {
    const fn of(octets: [u8; 4], prefix: u8) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]),
            prefix,
        }
    }

    /// The network of `addr` with `prefix` bits (host bits cleared);
    /// `None` for a prefix over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        (prefix <= 32).then(|| Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// `a.b.c.d/n` (or one address, `a.b.c.d`, as `/32`). Host bits must
    /// be clear: `10.0.0.1/8` is refused with the network it probably meant.
    pub fn parse(s: &str) -> Result<Ipv4Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| {
            if a.contains(':') {
                format!("{s:?} is IPv6; sessions have IPv4 only")
            } else {
                format!("{s:?} is not an IPv4 CIDR like 10.0.0.0/8")
            }
        })?;
        let prefix = (!p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u8>().ok())
            .flatten()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let net = Ipv4Cidr::new(addr, prefix).unwrap_or(Ipv4Cidr { addr, prefix });
        if net.addr != addr {
            return Err(format!("{s:?} has host bits set (did you mean {net}?)"));
        }
        Ok(net)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether every address of `other` is in this network.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix
            && u32::from(other.addr) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The `n`th subnet of `prefix` bits inside this network, if there is one.
    pub fn subnet(&self, prefix: u8, n: u32) -> Option<Ipv4Cidr> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(n) >= count {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        let addr = u64::from(u32::from(self.addr)) + u64::from(n) * step;
        Ipv4Cidr::new(Ipv4Addr::from(addr as u32), prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ipv4Cidr::parse(s)
    }
}

impl Egress {
    pub fn is_none(&self) -> bool {
        matches!(self, Egress::None)
    }

    /// The policy checked and in its one spelling: every CIDR parsed (at
    /// most [`MAX_CIDRS`], none inside a [`NEVER`] range), sorted, without
    /// repeats; an empty list is `None`. Without `allow_internet`,
    /// `"internet"` and any CIDR outside [`PRIVATE`] are refused, naming
    /// [`INTERNET_SETTING`]. The error is a sentence for the caller.
    pub fn checked(&self, allow_internet: bool) -> Result<Egress, String> {
        let not_allowed = |what: &str| {
            format!(
                "egress to {what} is not allowed here (the operator's {INTERNET_SETTING} is false); \
                 sessions may list private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10)"
            )
        };
        let list = match self {
            Egress::None => return Ok(Egress::None),
            Egress::Internet if allow_internet => return Ok(Egress::Internet),
            Egress::Internet => return Err(not_allowed("the internet")),
            Egress::Cidrs(list) => list,
        };
        if list.len() > MAX_CIDRS {
            return Err(format!(
                "egress lists {} CIDRs; at most {MAX_CIDRS} are allowed",
                list.len()
            ));
        }
        let mut nets = Vec::with_capacity(list.len());
        for s in list {
            let net = Ipv4Cidr::parse(s).map_err(|e| format!("egress: {e}"))?;
            if let Some((_, why)) = NEVER.iter().find(|(n, _)| n.contains(&net)) {
                return Err(format!(
                    "egress: {net} is never reachable from a session ({why})"
                ));
            }
            if !allow_internet && !PRIVATE.iter().any(|p| p.contains(&net)) {
                return Err(not_allowed(&format!(
                    "{net}, which is not a private range,"
                )));
            }
            nets.push(net);
        }
        nets.sort();
        nets.dedup();
        if nets.is_empty() {
            return Ok(Egress::None);
        }
        Ok(Egress::Cidrs(nets.iter().map(|n| n.to_string()).collect()))
    }

    /// The listed networks, parsed (those that do not parse are left out:
    /// call [`Egress::checked`] first).
    pub fn cidrs(&self) -> Vec<Ipv4Cidr> {
        match self {
            Egress::Cidrs(list) => list.iter().filter_map(|s| s.parse().ok()).collect(),
            _ => Vec::new(),
        }
    }

    /// One line of text: `none`, `internet` or `10.0.0.0/8,192.168.1.0/24`
    /// (a database column, a container label).
    pub fn to_text(&self) -> String {
        match self {
            Egress::None => "none".into(),
            Egress::Internet => "internet".into(),
            Egress::Cidrs(list) => list.join(","),
        }
    }

    /// Reads [`Egress::to_text`]'s line back (empty: `None`). The CIDRs
    /// are not checked here.
    pub fn from_text(s: &str) -> Egress {
        match s {
            "" | "none" => Egress::None,
            "internet" => Egress::Internet,
            list => Egress::Cidrs(list.split(',').map(str::to_string).collect()),
        }
    }
}

impl Serialize for Egress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Egress::None => s.serialize_str("none"),
            Egress::Internet => s.serialize_str("internet"),
            Egress::Cidrs(list) => {
                let mut seq = s.serialize_seq(Some(list.len()))?;
                for c in list {
                    seq.serialize_element(c)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Egress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Egress, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Egress;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("egress as \"none\", \"internet\" or a list of IPv4 CIDRs")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Egress, E> {
                match v {
                    "none" => Ok(Egress::None),
                    "internet" => Ok(Egress::Internet),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Egress, E> {
                Ok(Egress::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Egress, A::Error> {
                let mut list = Vec::new();
                while let Some(c) = seq.next_element::<String>()? {
                    // Bounded while reading: a huge list is refused here,
                    // not after it was all held.
                    if list.len() > MAX_CIDRS {
                        return Err(de::Error::invalid_length(list.len() + 1, &self));
                    }
                    list.push(c);
                }
                Ok(Egress::Cidrs(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// Its OpenAPI schema: one of `"none"` / `"internet"`, or a list of CIDRs
/// (the API's fields name it with `schema_with`, as it serialises by hand).
#[cfg(feature = "openapi")]
pub fn schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["none", "internet"])),
        )
        .item(
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("an IPv4 CIDR (a.b.c.d/n) or address")),
                )
                .max_items(Some(MAX_CIDRS)),
        )
        .description(Some(
            "What the session may reach beyond Warren: \"none\" (the default), \"internet\" \
             (where the operator allows it) or a list of IPv4 CIDRs",
        ))
        .build()
        .into()
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Egress {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::RefOr::T(schema())
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Egress {}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(s).expect(s)
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("0.0.0.0/0").prefix(), 0);
        for (bad, says) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0/8", "not an IPv4 CIDR"),
            ("010.0.0.0/8", "not an IPv4 CIDR"),
            ("fd00::/8", "IPv6"),
            (" 10.0.0.0/8", "not an IPv4 CIDR"),
        ] {
            let e = Ipv4Cidr::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(cidr("172.16.0.0/12").contains(&cidr("172.20.0.0/16")));
        assert!(!cidr("172.20.0.0/16").contains(&cidr("172.16.0.0/12")));
        assert!(cidr("172.20.0.0/16").overlaps(&cidr("172.16.0.0/12")));
        assert!(!cidr("10.0.0.0/8").overlaps(&cidr("11.0.0.0/8")));
        assert!(cidr("0.0.0.0/0").contains(&cidr("255.255.255.255")));
        let pool = cidr("10.254.0.0/16");
        assert_eq!(pool.subnet(28, 0), Some(cidr("10.254.0.0/28")));
        assert_eq!(pool.subnet(28, 17), Some(cidr("10.254.1.16/28")));
        assert_eq!(pool.subnet(28, 4095), Some(cidr("10.254.255.240/28")));
        assert_eq!(pool.subnet(28, 4096), None);
        assert_eq!(pool.subnet(8, 0), None);
    }

    #[test]
    fn policies_are_checked_against_the_operators_setting() {
        let list = |v: &[&str]| Egress::Cidrs(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(Egress::None.checked(false), Ok(Egress::None));
        assert_eq!(list(&[]).checked(false), Ok(Egress::None));
        assert_eq!(
            list(&["192.168.0.0/16", "10.0.0.0/8", "10.0.0.0/8"]).checked(false),
            Ok(list(&["10.0.0.0/8", "192.168.0.0/16"])),
            "sorted, without repeats"
        );
        let e = Egress::Internet.checked(false).expect_err("internet");
        assert!(e.contains(INTERNET_SETTING), "{e}");
        let e = list(&["0.0.0.0/0"]).checked(false).expect_err("everything");
        assert!(
            e.contains(INTERNET_SETTING) && e.contains("0.0.0.0/0"),
            "{e}"
        );
        let e = list(&["8.8.8.8"]).checked(false).expect_err("public");
        assert!(e.contains(INTERNET_SETTING), "{e}");
        assert_eq!(Egress::Internet.checked(true), Ok(Egress::Internet));
        assert_eq!(
            list(&["0.0.0.0/0", "8.8.8.8"]).checked(true),
            Ok(list(&["0.0.0.0/0", "8.8.8.8/32"]))
        );
        let e = list(&["169.254.169.254"])
            .checked(true)
            .expect_err("metadata");
        assert!(
            e.contains("never reachable") && e.contains("metadata"),
            "{e}"
        );
        let e = list(&["127.0.0.0/8"]).checked(true).expect_err("loopback");
        assert!(e.contains("loopback"), "{e}");
        let many: Vec<String> = (0..=MAX_CIDRS).map(|i| format!("10.{i}.0.0/16")).collect();
        let e = Egress::Cidrs(many).checked(false).expect_err("too many");
        assert!(e.contains("at most 32"), "{e}");
        let e = list(&["10.0.0.1/8"]).checked(false).expect_err("host bits");
        assert!(e.starts_with("egress: ") && e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn the_wire_and_the_text_forms() {
        let read = |j: &str| serde_json::from_str::<Egress>(j);
        assert_eq!(read("\"none\"").ok(), Some(Egress::None));
        assert_eq!(read("null").ok(), Some(Egress::None));
        assert_eq!(read("\"internet\"").ok(), Some(Egress::Internet));
        assert_eq!(
            read("[\"10.0.0.0/8\"]").ok(),
            Some(Egress::Cidrs(vec!["10.0.0.0/8".into()]))
        );
        for bad in ["\"all\"", "42", "{}"] {
            let e = read(bad).expect_err(bad).to_string();
            assert!(e.contains("\"none\", \"internet\" or a list"), "{bad}: {e}");
        }
        assert!(read("[1]").is_err(), "CIDRs are strings");
        let huge = format!("[{}]", vec!["\"10.0.0.0/8\""; 10_000].join(","));
        assert!(read(&huge).is_err(), "bounded while reading");
        for e in [
            Egress::None,
            Egress::Internet,
            Egress::Cidrs(vec!["10.0.0.0/8".into(), "192.168.1.0/24".into()]),
        ] {
            let json = serde_json::to_string(&e).expect("serialised");
            assert_eq!(read(&json).ok(), Some(e.clone()));
            assert_eq!(Egress::from_text(&e.to_text()), e);
        }
        assert_eq!(Egress::from_text(""), Egress::None);
    }
}
