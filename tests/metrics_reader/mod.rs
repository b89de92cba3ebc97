//! Reading the metrics a test exported to an in-memory exporter.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

/// Reading one export.
pub struct Metrics<'a>(pub &'a ResourceMetrics);

impl Metrics<'_> {
    pub fn find(&self, name: &str) -> Option<&Metric> {
        let found: Vec<&Metric> = self
            .0
            .scope_metrics()
            .filter(|scope| scope.scope().name() == "jetevents")
            .flat_map(|scope| scope.metrics())
            .filter(|metric| metric.name() == name)
            .collect();
        assert!(found.len() <= 1, "{name} exported {} times", found.len());
        found.into_iter().next()
    }

    pub fn get(&self, name: &str) -> &Metric {
        self.find(name).unwrap_or_else(|| {
            let names: Vec<String> = self
                .0
                .scope_metrics()
                .flat_map(|scope| scope.metrics())
                .map(|metric| metric.name().to_owned())
                .collect();
            panic!("{name} not exported; got {names:?}")
        })
    }

    /// Sum of a `u64` counter over the data points having all of `with`.
    pub fn sum_u64(&self, name: &str, with: &[KeyValue]) -> u64 {
        match self.get(name).data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .filter(|point| has_all(point.attributes(), with))
                .map(|point| point.value())
                .sum(),
            other => panic!("{name}: not a u64 sum: {other:?}"),
        }
    }

    /// Like `sum_u64`, for an instrument that may never have been used.
    pub fn sum_u64_or_zero(&self, name: &str) -> u64 {
        self.find(name).map_or(0, |_| self.sum_u64(name, &[]))
    }

    /// Values of an `i64` up-down counter, one per attribute set.
    pub fn sum_i64_points(&self, name: &str) -> Vec<i64> {
        match self.get(name).data() {
            AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                sum.data_points().map(|point| point.value()).collect()
            }
            other => panic!("{name}: not an i64 sum: {other:?}"),
        }
    }

    /// Recorded values of an `f64` histogram over the data points having all
    /// of `with`.
    pub fn histogram_count(&self, name: &str, with: &[KeyValue]) -> u64 {
        match self.get(name).data() {
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                .data_points()
                .filter(|point| has_all(point.attributes(), with))
                .map(|point| {
                    assert_eq!(
                        point.bucket_counts().sum::<u64>(),
                        point.count(),
                        "{name}: buckets add up"
                    );
                    point.count()
                })
                .sum(),
            other => panic!("{name}: not an f64 histogram: {other:?}"),
        }
    }

    /// The last value of an `i64` gauge at the data point having all of
    /// `with`, if it was recorded.
    pub fn gauge_i64(&self, name: &str, with: &[KeyValue]) -> Option<i64> {
        match self.find(name)?.data() {
            AggregatedMetrics::I64(MetricData::Gauge(gauge)) => gauge
                .data_points()
                .find(|point| has_all(point.attributes(), with))
                .map(|point| point.value()),
            other => panic!("{name}: not an i64 gauge: {other:?}"),
        }
    }

    /// Last value of a `u64` gauge on the data point having all of `with`.
    pub fn gauge_u64(&self, name: &str, with: &[KeyValue]) -> Option<u64> {
        match self.get(name).data() {
            AggregatedMetrics::U64(MetricData::Gauge(gauge)) => gauge
                .data_points()
                .find(|point| has_all(point.attributes(), with))
                .map(|point| point.value()),
            other => panic!("{name}: not a u64 gauge: {other:?}"),
        }
    }

    pub fn has_attribute(&self, name: &str, key: &str) -> bool {
        match self.get(name).data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .any(|point| point.attributes().any(|kv| kv.key.as_str() == key)),
            other => panic!("{name}: not a u64 sum: {other:?}"),
        }
    }
}

fn has_all<'a>(attributes: impl Iterator<Item = &'a KeyValue>, with: &[KeyValue]) -> bool {
    let attributes: Vec<&KeyValue> = attributes.collect();
    with.iter().all(|wanted| attributes.contains(&wanted))
}

/// An in-memory meter provider for one test: its meter goes into
/// `Config::meter`, and `totals` reads what was recorded.
pub struct Recorder {
    exporter: opentelemetry_sdk::metrics::InMemoryMetricExporter,
    provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

impl Recorder {
    pub fn new() -> Self {
        let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        use opentelemetry::metrics::MeterProvider as _;
        self.provider.meter("jetevents")
    }

    /// Everything recorded so far (cumulative: the last export holds the
    /// totals).
    pub fn totals(&self) -> ResourceMetrics {
        self.provider.force_flush().unwrap();
        self.exporter
            .get_finished_metrics()
            .unwrap()
            .pop()
            .expect("an export")
    }
}
