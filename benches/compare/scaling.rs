//! Scenario 8: one group consumed by 1, 4 and 16 instances in this process,
//! each instance a consumer on its own connection (a jetevents `Client` or a
//! raw async-nats connection), against the same number of raw instances.

use futures_util::future::join_all;

use crate::common::{self, Raw};
use crate::consume::{fill_backlog, rounds_of_group};
use crate::report::{Metric, Scenario};
use crate::Settings;

pub async fn scaling(settings: &Settings, raw: &Raw, url: &str) -> Scenario {
    let count = settings.events;
    fill_backlog(raw, count).await;
    let mut scenario = Scenario::new(
        "8",
        format!(
            "consume {count} events with N instances of one group, each on its own connection ({})",
            common::runtime_name(settings.threads)
        ),
    );
    for instances in settings.instances.iter().copied() {
        let je = join_all((0..instances).map(|_| common::jetevents_client(url))).await;
        let raws = join_all((0..instances).map(|_| Raw::connect(url))).await;
        let label = format!("8, {instances} instances");
        let (rates, cpu) = rounds_of_group(settings, &je, &raws, &label).await;
        let mut throughput = Metric::throughput("events/s", &rates[0], &rates[1], 0.0);
        throughput.name = format!("throughput, {instances} instances");
        scenario.push(throughput);
        let mut cpu = Metric::cpu(&cpu[0], &cpu[1]);
        cpu.name = format!("client CPU, {instances} instances");
        scenario.push(cpu);
    }
    scenario
}
