//! [`RunningService`]: a started service, until stopped or dropped.

use async_nats::service::{Info, Service};
use futures_util::FutureExt;
use tokio::task::JoinHandle;

/// A service instance answering requests. Dropping it stops answering at
/// once (requests in flight are abandoned); [`stop`](Self::stop) drains them.
#[derive(Debug)]
pub struct RunningService {
    service: Option<Service>,
    endpoints: Vec<JoinHandle<()>>,
}

impl RunningService {
    pub(crate) fn new(service: Service, endpoints: Vec<JoinHandle<()>>) -> Self {
        Self {
            service: Some(service),
            endpoints,
        }
    }

    /// What `$SRV.INFO` answers for this instance: its id, name, version and
    /// endpoints.
    pub async fn info(&self) -> Option<Info> {
        match &self.service {
            Some(service) => Some(service.info().await),
            None => None,
        }
    }

    /// Stops taking requests, lets those in flight answer, then returns.
    pub async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            // Unsubscribes every endpoint: their request streams end.
            let _ = service.stop().await;
        }
        for endpoint in self.endpoints.drain(..) {
            let _ = endpoint.await;
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            // `Service::stop` does all its work before its first await point.
            let _ = service.stop().now_or_never();
        }
        for endpoint in &self.endpoints {
            endpoint.abort();
        }
    }
}
