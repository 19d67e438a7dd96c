//! The metric primitives behind `/metrics` — counters and histograms on atomics,
//! labelled families of them — and the Prometheus text exposition format (0.0.4) they
//! are written in.
//!
//! Hand-written rather than the `metrics` crate and its Prometheus exporter: Kiln's
//! metrics are a fixed, small set known at compile time, so a recorder, a global
//! registry, key hashing and the exporter's HTTP listener would all be unused weight
//! (that pair brings a dozen crates). Recording is one relaxed atomic add (two plus a
//! compare-and-swap for a histogram's sum); a labelled family takes a read lock to find
//! its member and the write lock only the first time a label set is seen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn increment(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending), with their sum.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for values above the last bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let value = if value.is_finite() { value } else { 0.0 };
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }
}

/// Metrics of one kind told apart by their labels (`K`), created on first use.
pub(crate) struct Family<K, M> {
    members: RwLock<BTreeMap<K, Arc<M>>>,
    make: fn() -> M,
}

impl<K: Ord + Clone, M> Family<K, M> {
    pub fn new(make: fn() -> M) -> Self {
        Self {
            members: RwLock::new(BTreeMap::new()),
            make,
        }
    }

    /// The member for `key`, created when new.
    pub fn get(&self, key: &K) -> Arc<M> {
        if let Some(member) = self.members.read().expect("metrics lock").get(key) {
            return member.clone();
        }
        self.members
            .write()
            .expect("metrics lock")
            .entry(key.clone())
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    /// Every member, in key order.
    pub fn members(&self) -> Vec<(K, Arc<M>)> {
        self.members
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(key, member)| (key.clone(), member.clone()))
            .collect()
    }
}

impl<K, M> std::fmt::Debug for Family<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Family")
    }
}

/// Label names and values of one sample.
pub(crate) type Labels<'a> = &'a [(&'a str, &'a str)];

/// A document in the Prometheus text exposition format, written family by family.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.text.push_str(name);
        self.labels(labels, None);
        self.text.push(' ');
        self.value(value);
        self.text.push('\n');
    }

    /// A histogram's cumulative buckets, sum and count under `labels`.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, histogram: &Histogram) {
        let mut cumulative = 0u64;
        let bucket_name = format!("{name}_bucket");
        let mut bound_text = String::new();
        for (index, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            bound_text.clear();
            match histogram.bounds.get(index) {
                Some(bound) => {
                    let _ = write!(bound_text, "{bound}");
                }
                None => bound_text.push_str("+Inf"),
            }
            self.text.push_str(&bucket_name);
            self.labels(labels, Some(&bound_text));
            let _ = writeln!(self.text, " {cumulative}");
        }
        // The count is the +Inf bucket's, so the two agree even while observations
        // land during the scrape.
        self.text.push_str(name);
        self.text.push_str("_sum");
        self.labels(labels, None);
        self.text.push(' ');
        self.value(histogram.sum());
        self.text.push('\n');
        self.text.push_str(name);
        self.text.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {cumulative}");
    }

    fn labels(&mut self, labels: Labels<'_>, le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let mut first = true;
        for (name, value) in labels.iter().copied().chain(le.map(|bound| ("le", bound))) {
            if !first {
                self.text.push(',');
            }
            first = false;
            self.text.push_str(name);
            self.text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }

    fn value(&mut self, value: f64) {
        if value.is_nan() {
            self.text.push_str("NaN");
        } else if value.is_infinite() {
            self.text
                .push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = write!(self.text, "{}", value as i64);
        } else {
            let _ = write!(self.text, "{value}");
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulatively_with_its_sum_and_count() {
        static BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];
        let histogram = Histogram::new(&BOUNDS);
        for value in [0.05, 0.1, 0.5, 20.0] {
            histogram.observe(value);
        }
        let mut exposition = Exposition::default();
        exposition.family("x_seconds", "histogram", "Test.");
        exposition.histogram("x_seconds", &[("route", "/a\"b\\c\nd")], &histogram);
        let text = exposition.finish();
        assert_eq!(
            text,
            "# HELP x_seconds Test.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"0.1\"} 2\n\
             x_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"1\"} 3\n\
             x_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"10\"} 3\n\
             x_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"+Inf\"} 4\n\
             x_seconds_sum{route=\"/a\\\"b\\\\c\\nd\"} 20.65\n\
             x_seconds_count{route=\"/a\\\"b\\\\c\\nd\"} 4\n"
        );
        assert_eq!(histogram.count(), 4);
    }

    #[test]
    fn a_family_creates_each_member_once() {
        let family: Family<&'static str, Counter> = Family::new(Counter::default);
        family.get(&"b").increment();
        family.get(&"a").add(2);
        family.get(&"b").increment();
        let members: Vec<(&str, u64)> = family
            .members()
            .into_iter()
            .map(|(key, counter)| (key, counter.get()))
            .collect();
        assert_eq!(members, [("a", 2), ("b", 2)]);
    }
}
