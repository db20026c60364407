//! Connections (or handshakes) in progress per source address, so that one host cannot take
//! every slot of a listener: the syslog TCP/TLS listeners and the cluster-link listeners share
//! it. A [`SourceSlot`] gives its place back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Slots taken per source address.
#[derive(Debug, Default)]
pub struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One slot of one source; freed on drop.
#[derive(Debug)]
pub struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    /// A slot for `ip`, unless it holds `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Slots `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_max_and_gets_its_slots_back() {
        let t = Arc::new(PerSource::default());
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let s1 = t.take(a, 2).expect("first");
        let s2 = t.take(a, 2).expect("second");
        assert!(t.take(a, 2).is_none());
        let other = t.take(b, 2).expect("another source");
        assert_eq!((t.held(a), t.held(b)), (2, 1));
        drop(s1);
        let s3 = t.take(a, 2).expect("freed");
        drop((s2, s3, other));
        assert_eq!((t.held(a), t.held(b)), (0, 0));
    }
}
