//! What the publisher counts: names served, VIPs moved by explicit entries, whether the
//! allocation store works, how full each VIP pool is, and VIPs left inside Istio's ranges.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use crate::alloc::PoolUsage;
use crate::metrics::{family, single};

#[derive(Default)]
pub struct PublishMetrics {
    names: AtomicU64,
    conflicts: AtomicU64,
    /// Whether the last read or write of the allocation store worked, and whether one ever did.
    store_up: AtomicBool,
    store_reached: AtomicBool,
    pools: Mutex<Vec<PoolUsage>>,
    in_istio_ranges: AtomicU64,
    /// Tables made by changing the one before, and built whole.
    incremental: AtomicU64,
    rebuilt: AtomicU64,
}

impl std::fmt::Debug for PublishMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublishMetrics")
    }
}

impl PublishMetrics {
    /// After a publish: names served, pool usage, and stored VIPs inside an Istio range.
    pub fn published(&self, names: usize, pools: Vec<PoolUsage>, in_istio_ranges: usize) {
        self.names.store(names as u64, Relaxed);
        self.in_istio_ranges.store(in_istio_ranges as u64, Relaxed);
        *self.pools.lock().expect("metrics lock") = pools;
    }

    pub fn store_result(&self, ok: bool) {
        self.store_up.store(ok, Relaxed);
        if ok {
            self.store_reached.store(true, Relaxed);
        }
    }

    /// Whether the allocation store was ever read or written: part of readiness.
    pub fn store_reached(&self) -> bool {
        self.store_reached.load(Relaxed)
    }

    /// A table was swapped in: made from the one before by its changes, or built whole.
    pub fn table_made(&self, incremental: bool) {
        let counter = if incremental {
            &self.incremental
        } else {
            &self.rebuilt
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Tables made from the one before (`true`) and built whole (`false`) so far.
    pub fn tables_made(&self) -> (u64, u64) {
        (self.incremental.load(Relaxed), self.rebuilt.load(Relaxed))
    }

    pub fn conflicts(&self, count: u64) {
        self.conflicts.fetch_add(count, Relaxed);
    }
}

impl Collector for PublishMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        single(
            &mut encoder,
            "globaldns_names",
            "Host names in the served name table.",
            Gauge,
            self.names.load(Relaxed) as f64,
        )?;
        single(
            &mut encoder,
            "globaldns_allocation_conflicts",
            "Allocated VIPs moved because a ServiceEntry declared them.",
            Counter,
            self.conflicts.load(Relaxed) as f64,
        )?;
        single(
            &mut encoder,
            "globaldns_store_up",
            "1 if the last read or write of the allocation store worked.",
            Gauge,
            f64::from(u8::from(self.store_up.load(Relaxed))),
        )?;
        single(
            &mut encoder,
            "globaldns_vips_in_istio_range",
            "Stored VIPs inside a range istiod allocates from: still answered, to be moved (dnsctl allocate HOST --force).",
            Gauge,
            self.in_istio_ranges.load(Relaxed) as f64,
        )?;
        family(
            &mut encoder,
            "globaldns_table_updates",
            "Name tables swapped in, by how they were made: from the table before by what changed (incremental), or built whole (full: the first, and after big changes).",
            Counter,
            [
                (
                    vec![("path", "incremental")],
                    self.incremental.load(Relaxed) as f64,
                ),
                (vec![("path", "full")], self.rebuilt.load(Relaxed) as f64),
            ],
        )?;
        let pools = self.pools.lock().expect("metrics lock").clone();
        for (metric, help, value) in [
            (
                "globaldns_vip_pool_size",
                "Addresses a VIP pool can hand out.",
                (|p: &PoolUsage| p.capacity as f64) as fn(&PoolUsage) -> f64,
            ),
            (
                "globaldns_vip_pool_used",
                "Addresses of a VIP pool held by hosts.",
                |p| p.used as f64,
            ),
            (
                "globaldns_vip_pool_free",
                "Addresses of a VIP pool still free.",
                |p| p.capacity.saturating_sub(p.used) as f64,
            ),
        ] {
            family(
                &mut encoder,
                metric,
                help,
                Gauge,
                pools
                    .iter()
                    .map(|p| (vec![("pool", p.pool.as_str())], value(p))),
            )?;
        }
        Ok(())
    }
}
