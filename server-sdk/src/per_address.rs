//! Counting what each client address holds at once (sessions, TLS
//! handshakes), so that one address cannot take every slot.
//!
//! An IPv6 client is counted by its /64 network: a single host commonly has
//! the whole /64, 2^64 addresses to spread connections over. A home or an
//! office is commonly given a /56 or a /48, so many /64s: their /56 may
//! also hold at most [`SITE_56_FACTOR`] times the limit, and their /48
//! [`SITE_48_FACTOR`] times (a whole /48 then takes at most that share of
//! the server, not all of it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// How many times an address's limit the /56 around an IPv6 client holds.
pub(crate) const SITE_56_FACTOR: usize = 4;
/// How many times an address's limit the /48 around an IPv6 client holds.
pub(crate) const SITE_48_FACTOR: usize = 16;

/// What each address (IPv6: each /64, and each /56 and /48) holds.
#[derive(Debug, Default, Clone)]
pub(crate) struct PerAddress(Arc<Mutex<Counts>>);

#[derive(Debug, Default)]
struct Counts {
    by_group: HashMap<IpAddr, usize>,
    /// IPv6 networks larger than a /64, by prefix length and network.
    by_site: HashMap<(u8, IpAddr), usize>,
    /// The sum of `by_group`.
    total: usize,
}

/// One place in a [`PerAddress`]; freed when dropped.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    counts: PerAddress,
    group: IpAddr,
    sites: Vec<(u8, IpAddr)>,
}

/// The networks around an IPv6 client that are counted too, each with the
/// factor of the limit it may hold.
fn sites(group: IpAddr) -> Vec<((u8, IpAddr), usize)> {
    let IpAddr::V6(v6) = group else {
        return Vec::new();
    };
    [(56u8, SITE_56_FACTOR), (48, SITE_48_FACTOR)]
        .into_iter()
        .map(|(prefix, factor)| {
            let network = u128::from(v6) & !((1u128 << (128 - prefix)) - 1);
            ((prefix, IpAddr::V6(network.into())), factor)
        })
        .collect()
}

/// The address `ip` is counted as: an IPv4 address (also written as
/// IPv4-mapped IPv6) as itself, an IPv6 address as its /64.
pub(crate) fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(network.into())
            }
        },
    }
}

impl PerAddress {
    /// A place for `ip`, unless its group already holds `limit`.
    pub(crate) fn take(&self, ip: IpAddr, limit: usize) -> Option<AddressSlot> {
        let group = address_group(ip);
        let sites = sites(group);
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.by_group.get(&group).copied().unwrap_or(0) >= limit {
            return None;
        }
        let site_full = sites.iter().any(|(site, factor)| {
            counts.by_site.get(site).copied().unwrap_or(0) >= limit.saturating_mul(*factor)
        });
        if site_full {
            return None;
        }
        *counts.by_group.entry(group).or_insert(0) += 1;
        for (site, _) in &sites {
            *counts.by_site.entry(*site).or_insert(0) += 1;
        }
        counts.total += 1;
        Some(AddressSlot {
            counts: self.clone(),
            group,
            sites: sites.into_iter().map(|(site, _)| site).collect(),
        })
    }

    /// How many places all addresses hold.
    pub(crate) fn held(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).total
    }

    /// The address group holding the most places, if any.
    #[cfg_attr(
        not(feature = "tls"),
        allow(dead_code, reason = "the TLS accept loop's alone")
    )]
    pub(crate) fn busiest(&self) -> Option<IpAddr> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .by_group
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(group, _)| *group)
    }
}

impl AddressSlot {
    /// The address group this place is counted in.
    #[cfg_attr(
        not(feature = "tls"),
        allow(dead_code, reason = "the TLS accept loop's alone")
    )]
    pub(crate) fn group(&self) -> IpAddr {
        self.group
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut guard = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = &mut *guard;
        if let Some(count) = counts.by_group.get_mut(&self.group) {
            *count -= 1;
            counts.total -= 1;
            if *count == 0 {
                counts.by_group.remove(&self.group);
            }
        }
        for site in &self.sites {
            if let Some(count) = counts.by_site.get_mut(site) {
                *count -= 1;
                if *count == 0 {
                    counts.by_site.remove(site);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_counted_and_freed() {
        let counts = PerAddress::default();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = counts.take(ip, 2).unwrap();
        let b = counts.take(ip, 2).unwrap();
        assert!(counts.take(ip, 2).is_none(), "the third is refused");
        assert!(
            counts.take([127, 0, 0, 2].into(), 2).is_some(),
            "other addresses are not"
        );
        assert_eq!(counts.held(), 2);
        assert_eq!(counts.busiest(), Some(ip));
        drop(a);
        assert_eq!(counts.held(), 1);
        assert!(counts.take(ip, 2).is_some());
        drop(b);
        assert_eq!((counts.held(), counts.busiest()), (0, None));
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let counts = PerAddress::default();
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        let _held: Vec<AddressSlot> = (1..=3).map(|n| counts.take(host(n), 3).unwrap()).collect();
        assert!(
            counts.take(host(999), 3).is_none(),
            "another address of the same /64 is the same client"
        );
        assert!(
            counts
                .take(IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]), 3)
                .is_some(),
            "the next /64 is another"
        );
        let v4: IpAddr = [192, 0, 2, 7].into();
        let _v4 = counts.take(v4, 1).unwrap();
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert!(counts.take(mapped, 1).is_none());
    }

    #[test]
    fn the_56_and_48_around_ipv6_clients_hold_a_bounded_share() {
        let counts = PerAddress::default();
        // One address per /64, all in 2001:db8:0:0::/56.
        let in_56 = |net: u16| IpAddr::from([0x2001, 0xdb8, 0, net, 0, 0, 0, 1]);
        let held: Vec<AddressSlot> = (0..8).map(|n| counts.take(in_56(n), 2).unwrap()).collect();
        assert_eq!(held.len(), 2 * SITE_56_FACTOR);
        assert!(counts.take(in_56(9), 2).is_none(), "the /56 is full");
        // The next /56 of the same /48 is not, until the /48 is.
        let in_48 = |net: u16| IpAddr::from([0x2001, 0xdb8, 0, net << 8, 0, 0, 0, 1]);
        let more: Vec<AddressSlot> = (1..32).filter_map(|n| counts.take(in_48(n), 2)).collect();
        assert_eq!(held.len() + more.len(), 2 * SITE_48_FACTOR);
        assert!(counts.take(in_48(40), 2).is_none(), "the /48 is full");
        assert!(
            counts
                .take(IpAddr::from([0x2001, 0xdb9, 0, 0, 0, 0, 0, 1]), 2)
                .is_some(),
            "another /48 is another site"
        );
        drop(held);
        assert!(counts.take(in_56(9), 2).is_some(), "freed with the slots");
        drop(more);
        let counted = counts.0.lock().unwrap();
        assert!(counted.by_site.is_empty(), "{:?}", counted.by_site);
        assert_eq!(counted.total, 0);
    }
}
