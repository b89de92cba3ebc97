//! The results table and JSON.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::median;

/// Which direction is better, and so how the target reads.
#[derive(Clone, Copy, Debug)]
pub enum Better {
    /// Throughput: ratio jetevents/raw must be at least the target.
    Higher,
    /// Latency, memory: ratio jetevents/raw must be at most the target.
    Lower,
}

/// One measured quantity, both sides.
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub jetevents: f64,
    pub raw: f64,
    pub better: Better,
    /// 0: informational, no target.
    pub target: f64,
    pub jetevents_runs: Vec<f64>,
    pub raw_runs: Vec<f64>,
    /// The target bounds jetevents' own value, not the ratio (memory growth).
    pub absolute: bool,
    /// Median of the per-round ratios, when the runs come in pairs.
    pub paired_ratio: Option<f64>,
}

impl Metric {
    /// Median of per-run rates; the ratio is the median of the per-round
    /// ratios. The two sides of a round run back to back, so their ratio
    /// cancels the machine's drift between rounds, which the medians of
    /// each side alone do not (a slow stretch can hold one side's median
    /// and miss the other's).
    pub fn throughput(unit: &'static str, je: &[f64], raw: &[f64], target: f64) -> Metric {
        let paired: Vec<f64> = je.iter().zip(raw).map(|(je, raw)| je / raw).collect();
        Metric {
            paired_ratio: (!paired.is_empty() && je.len() == raw.len()).then(|| median(&paired)),
            name: "throughput".to_owned(),
            unit,
            jetevents: median(je),
            raw: median(raw),
            better: Better::Higher,
            target,
            jetevents_runs: je.to_vec(),
            raw_runs: raw.to_vec(),
            absolute: false,
        }
    }

    /// Client CPU per event (median of runs), informational.
    pub fn cpu(je: &[f64], raw: &[f64]) -> Metric {
        Metric::cpu_of("client CPU", je, raw)
    }

    /// Server CPU per event while each side ran (median of runs),
    /// informational.
    pub fn server_cpu(je: &[f64], raw: &[f64]) -> Metric {
        Metric::cpu_of("server CPU", je, raw)
    }

    /// Server CPU seconds per wall second while each side ran (median of
    /// runs), informational: about 1.0 means a serial path was saturated.
    pub fn server_utilisation(je: &[f64], raw: &[f64]) -> Metric {
        Metric {
            unit: "cores",
            ..Metric::cpu_of("server CPU utilisation", je, raw)
        }
    }

    /// The same metric under another row name.
    pub fn named(mut self, name: &str) -> Metric {
        self.name = name.to_owned();
        self
    }

    fn cpu_of(name: &str, je: &[f64], raw: &[f64]) -> Metric {
        Metric {
            name: name.to_owned(),
            unit: "us/event",
            jetevents: median(je),
            raw: median(raw),
            better: Better::Lower,
            target: 0.0,
            jetevents_runs: je.to_vec(),
            raw_runs: raw.to_vec(),
            absolute: false,
            paired_ratio: None,
        }
    }

    /// A latency percentile, in microseconds.
    pub fn latency(name: &str, je: Duration, raw: Duration, target: f64) -> Metric {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        Metric {
            name: name.to_owned(),
            unit: "us",
            jetevents: us(je),
            raw: us(raw),
            better: Better::Lower,
            target,
            jetevents_runs: Vec::new(),
            raw_runs: Vec::new(),
            absolute: false,
            paired_ratio: None,
        }
    }

    /// Any value where lower is better (memory).
    pub fn lower(name: String, unit: &'static str, je: f64, raw: f64, target: f64) -> Metric {
        Metric {
            name,
            unit,
            jetevents: je,
            raw,
            better: Better::Lower,
            target,
            jetevents_runs: Vec::new(),
            raw_runs: Vec::new(),
            absolute: false,
            paired_ratio: None,
        }
    }

    /// The ratio jetevents/raw: of paired rounds when there are some, else
    /// of the two values.
    pub fn ratio(&self) -> f64 {
        self.paired_ratio.unwrap_or_else(|| self.ratio_of_values())
    }

    /// jetevents' value over raw's.
    pub fn ratio_of_values(&self) -> f64 {
        self.jetevents / self.raw
    }

    /// `None` without a target.
    pub fn meets_target(&self) -> Option<bool> {
        if self.target == 0.0 {
            return None;
        }
        let value = if self.absolute {
            self.jetevents
        } else {
            self.ratio()
        };
        Some(match self.better {
            Better::Higher => value >= self.target,
            Better::Lower => value <= self.target,
        })
    }

    fn target_text(&self) -> String {
        match (self.target == 0.0, self.better) {
            (true, _) => "-".to_owned(),
            (false, _) if self.absolute => format!("jetevents <= {:.2}", self.target),
            (false, Better::Higher) => format!(">= {:.2}", self.target),
            (false, Better::Lower) => format!("<= {:.2}", self.target),
        }
    }
}

/// One scenario's results.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub id: &'static str,
    pub title: String,
    pub metrics: Vec<Metric>,
    /// Extra facts (memory series, notes), carried into the JSON.
    pub notes: Vec<String>,
    pub extra: Value,
}

impl Scenario {
    pub fn new(id: &'static str, title: String) -> Scenario {
        Scenario {
            id,
            title,
            metrics: Vec::new(),
            notes: Vec::new(),
            extra: Value::Null,
        }
    }

    pub fn push(&mut self, metric: Metric) {
        self.metrics.push(metric);
    }
}

fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "us" => format!("{value:.1} us"),
        "us/event" => format!("{value:.2} us/event"),
        "MiB" => format!("{value:.1} MiB"),
        "x" => format!("{value:.2}x"),
        "cores" => format!("{value:.2} cores"),
        _ => format!("{value:.0} {unit}"),
    }
}

/// The Markdown table printed at the end (and pasted into BENCHMARKS.md).
pub fn table(scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    out.push_str("| # | scenario | metric | jetevents | raw async-nats | ratio | target | |\n");
    out.push_str("|---|---|---|---:|---:|---:|---|---|\n");
    for scenario in scenarios {
        for metric in &scenario.metrics {
            let verdict = match metric.meets_target() {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.3} | {} | {} |\n",
                scenario.id,
                scenario.title,
                metric.name,
                format_value(metric.jetevents, metric.unit),
                format_value(metric.raw, metric.unit),
                metric.ratio(),
                metric.target_text(),
                verdict,
            ));
        }
        for note in &scenario.notes {
            out.push_str(&format!(
                "| {} | {} | note | {} | | | | |\n",
                scenario.id, scenario.title, note
            ));
        }
    }
    out
}

/// The JSON document written to the results file.
pub fn json(settings: Value, machine: Value, scenarios: &[Scenario]) -> Value {
    let scenarios: Vec<Value> = scenarios
        .iter()
        .map(|scenario| {
            json!({
                "id": scenario.id,
                "title": scenario.title,
                "metrics": scenario.metrics.iter().map(|m| json!({
                    "name": m.name,
                    "unit": m.unit,
                    "jetevents": m.jetevents,
                    "raw": m.raw,
                    "ratio_jetevents_over_raw": m.ratio(),
                    "ratio_of_medians": m.ratio_of_values(),
                    "better": match m.better { Better::Higher => "higher", Better::Lower => "lower" },
                    "target": if m.target == 0.0 { Value::Null } else { json!(m.target) },
                    "meets_target": m.meets_target(),
                    "target_applies_to": if m.absolute { "jetevents" } else { "ratio" },
                    "jetevents_runs": m.jetevents_runs,
                    "raw_runs": m.raw_runs,
                })).collect::<Vec<_>>(),
                "notes": scenario.notes,
                "extra": scenario.extra,
            })
        })
        .collect();
    json!({
        "tool": "jetevents benches/compare",
        "settings": settings,
        "machine": machine,
        "scenarios": scenarios,
    })
}
