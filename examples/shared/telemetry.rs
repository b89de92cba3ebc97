//! How an application wires jetevents' spans into OpenTelemetry. The library
//! only creates `tracing` spans (and reads the meter it is given); installing
//! a subscriber, an exporter and a propagator is the application's job, done
//! once at startup, as here.
//!
//! - Log lines: a `fmt` layer on stderr, filtered by `RUST_LOG` (default
//!   `default_filter`), so stdout stays the demo's own output.
//! - Traces: with `JETEVENTS_TRACE_STDOUT=1`, a `tracing-opentelemetry` layer
//!   sends every INFO span (jetevents' `publish …` / `process …` spans and the
//!   application's own) to an SDK tracer provider that prints finished spans
//!   on stdout (crate `opentelemetry-stdout`).
//! - Propagation: the W3C trace-context propagator is installed globally for
//!   the application's other edges (HTTP, gRPC). jetevents does not need it:
//!   it writes `traceparent`/`tracestate` into the event itself.
//!
//! OTLP instead of stdout (a collector, Jaeger, Tempo, ...): add
//! `opentelemetry-otlp` (same 0.33 line) and replace the exporter:
//!
//! ```text
//! let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
//! SdkTracerProvider::builder().with_batch_exporter(exporter) ...
//! ```
//!
//! (endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT`). Metrics the same way: build
//! an `SdkMeterProvider` with `opentelemetry_otlp::MetricExporter` and pass
//! `provider.meter("jetevents")` as `Config::meter`, or install it with
//! `opentelemetry::global::set_meter_provider` before connecting.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The installed telemetry; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the span exporter, if any. Call before exiting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.shutdown() {
                eprintln!("span exporter shutdown: {err}");
            }
        }
    }
}

/// Installs the global subscriber and propagator for `service`.
pub fn init(service: &'static str, default_filter: &str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()));

    let provider = (std::env::var("JETEVENTS_TRACE_STDOUT").as_deref() == Ok("1")).then(|| {
        SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(service).build())
            // Simple: each span printed when it ends. A real exporter (OTLP)
            // wants `with_batch_exporter`.
            .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
            .build()
    });
    // Its own level filter: spans are INFO, while the log lines stay quiet.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(LevelFilter::INFO)
    });

    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    Telemetry { provider }
}
