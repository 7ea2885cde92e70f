//! Per-address limits: one machine opening many connections (or many
//! visitors behind one address) is held to one message budget, since each
//! connection's own limit alone would let it multiply its rate by its
//! connection count.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::ConnectInfo,
    http::{Extensions, HeaderMap},
};

/// The window the budget is counted over.
const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at most. Past it, expired windows are dropped; if
/// every one is still live (a flood from that many addresses within a
/// minute), a new address is let through untracked rather than the map
/// growing: each connection's own limit still holds it.
const MAX_TRACKED: usize = 65_536;

/// Messages per address per minute, in fixed one-minute windows.
#[derive(Debug)]
pub struct AddressLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AddressLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one message from `address` at `now`; whether it is within
    /// the budget. A refused message counts too, so hammering does not
    /// reopen the budget early.
    pub fn allow(&self, address: IpAddr, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(&address) && windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return true;
            }
        }
        let window = windows.entry(address).or_insert((now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= self.per_minute
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The visitor's address: from `header` when the channel sits behind a
/// proxy that sets it (the last of a comma-separated list: the address the
/// nearest proxy saw), else the connection's peer. `None` when the header
/// is configured but absent or unreadable, so a misconfigured proxy shows
/// as visitors without an address (no per-address limit) rather than all
/// visitors sharing the proxy's.
pub fn client_address(
    header: Option<&str>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<IpAddr> {
    let Some(header) = header else {
        return peer;
    };
    let value = headers.get(header)?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

/// [`client_address`] of a request the daemon's listener served (it puts
/// the peer in the request's extensions; a router served on its own in a
/// test has none).
pub fn of_request(
    header: Option<&str>,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Option<IpAddr> {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    client_address(header, headers, peer)
}

/// At most `max` things at once per address (uploads in flight): one
/// machine trickling bodies slowly cannot hold every slot of the channel,
/// whatever number of visitor ids it makes up. Only addresses with
/// something in flight are kept, so the map is bounded by the requests
/// open.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// A slot taken by [`AddressSlots::take`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<AddressSlots>,
    address: IpAddr,
}

impl AddressSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `address`, unless it holds `max` already.
    pub fn take(self: &Arc<Self>, address: IpAddr) -> Option<Slot> {
        let mut held = self.lock();
        let count = held.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            address,
        })
    }

    /// Addresses with something in flight.
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(count) = held.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn each_address_has_its_own_budget_per_minute() {
        let limiter = AddressLimiter::new(3);
        let t0 = Instant::now();
        let sent: Vec<bool> = (0..5).map(|_| limiter.allow(ip(1), t0)).collect();
        assert_eq!(sent, [true, true, true, false, false]);
        assert!(limiter.allow(ip(2), t0), "another address is not held back");
        assert!(!limiter.allow(ip(1), t0 + Duration::from_secs(59)));
        assert!(
            limiter.allow(ip(1), t0 + WINDOW),
            "a new minute, a new budget"
        );
    }

    #[test]
    fn tracking_is_bounded() {
        let limiter = AddressLimiter::new(1);
        let t0 = Instant::now();
        let address = |i: usize| IpAddr::from((i as u128).to_be_bytes());
        for i in 0..MAX_TRACKED {
            assert!(limiter.allow(address(i), t0));
        }
        // Full of live windows: a new address passes, untracked.
        assert!(limiter.allow(address(MAX_TRACKED), t0));
        assert_eq!(limiter.tracked(), MAX_TRACKED);
        // A minute on, the expired windows make room.
        assert!(limiter.allow(address(MAX_TRACKED), t0 + WINDOW));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn slots_are_per_address_and_given_back() {
        let slots = AddressSlots::new(2);
        let a = slots.take(ip(1)).unwrap();
        let _b = slots.take(ip(1)).unwrap();
        assert!(slots.take(ip(1)).is_none(), "two in flight at most");
        let _c = slots.take(ip(2)).expect("another address has its own");
        drop(a);
        let _d = slots.take(ip(1)).expect("a slot given back is free");
        drop((_b, _c, _d));
        assert_eq!(slots.addresses(), 0, "idle addresses are not kept");
    }

    #[test]
    fn the_address_comes_from_the_proxy_header_only_when_configured() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7".parse().unwrap(),
        );
        let peer = Some(ip(1));
        assert_eq!(client_address(None, &headers, peer), peer);
        assert_eq!(
            client_address(Some("x-forwarded-for"), &headers, peer),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(client_address(Some("x-real-ip"), &headers, peer), None);
        headers.insert("x-real-ip", "not an address".parse().unwrap());
        assert_eq!(client_address(Some("x-real-ip"), &headers, peer), None);
    }
}
